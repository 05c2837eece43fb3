"""One step off the tested path (issue 25): --compile, resume fingerprints, clipping, accumulation windows,
--init-layers on DistilBERT, the fp16 overflow guard, bad option values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_tiny_model

from sst2dist.train.loop import main


def in_process(*args: object) -> int:
    """`python -m sst2dist.train ARGS` in this process (quicker than a launch), Accelerate's state reset after."""
    from accelerate.state import AcceleratorState, GradientState

    try:
        return main([*map(str, args), "--mixed-precision", "no"])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def tiny_run(data: Path, model: Path, out: Path, *extra: object) -> list[object]:
    return [
        "--data", data, "--model", model, "--output-dir", out, "--max-train-samples", 32, "--max-eval-samples", 16,
        "--batch-size", 16, "--eval-every", 0, "--save-every", 0, "--lr", 1e-2, *extra,
    ]  # fmt: skip


def logits_of(model_dir: Path, state_dict: dict | None = None):
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    if state_dict is not None:
        model.load_state_dict(state_dict)
    ids = torch.tensor([[101, 2023, 3185, 2003, 2204, 102]])
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.slow
def test_compile_saves_a_model_that_reloads_to_the_trained_weights(
    sst2_sample_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "run"
    assert in_process(*tiny_run(sst2_sample_dir, tiny_model_dir, out, "--max-steps", 2, "--compile")) == 0
    saved = load_file(out / "model" / "model.safetensors")
    assert not [k for k in saved if "_orig_mod" in k]
    trained = load_file(out / "checkpoints" / "step-00000002" / "model.safetensors")
    trained = {k.replace("_orig_mod.", ""): v for k, v in trained.items()}
    reloaded = logits_of(out / "model")
    assert not logits_of(tiny_model_dir).allclose(reloaded)  # it did train
    assert logits_of(tiny_model_dir, trained).allclose(reloaded, atol=1e-6)


# ------------------------------------------------------------------------------------------ resume fingerprint


def copy_data(source: Path, target: Path, first_sentence: str | None = None) -> Path:
    """The same data at another path, or with its first training sentence replaced."""
    target.mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        lines = (source / name).read_text(encoding="utf-8").splitlines(keepends=True)
        if name == "train.tsv" and first_sentence is not None:
            lines[1] = f"{first_sentence}\t{lines[1].split(chr(9))[1]}"
        (target / name).write_text("".join(lines), encoding="utf-8")
    return target


def test_resume_refuses_other_rows_and_allows_the_same_rows_at_another_path(
    sst2_sample_dir: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert in_process(*tiny_run(sst2_sample_dir, tiny_model_dir, out, "--max-steps", 2)) == 0
    changed = copy_data(sst2_sample_dir, tmp_path / "changed", first_sentence="an entirely different sentence .")
    capsys.readouterr()
    assert in_process(*tiny_run(changed, tiny_model_dir, out, "--max-steps", 2, "--resume")) == 1
    error = capsys.readouterr().err
    assert "error: --resume with other rows read (sha256) than the run (--data: the run had " in error
    assert error.endswith("resume with the run's original --data\n")
    moved = copy_data(sst2_sample_dir, tmp_path / "moved")
    assert in_process(*tiny_run(moved, tiny_model_dir, out, "--max-steps", 2, "--resume")) == 0
    assert json.loads((out / "metrics.json").read_text())["resumed_from"].endswith("step-00000002")


@pytest.mark.slow
def test_resume_with_another_number_of_processes_is_refused(
    sst2_sample_dir: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    options = [*map(str, tiny_run(sst2_sample_dir, tiny_model_dir, out, "--max-steps", 2)), "--mixed-precision", "no"]
    command = [str(Path(sys.executable).parent / "sst2dist"), "train", "--num-processes", "2", *options]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    launched = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    capsys.readouterr()
    assert in_process(*tiny_run(sst2_sample_dir, tiny_model_dir, out, "--max-steps", 2, "--resume")) == 1
    error = capsys.readouterr().err
    assert "--resume with other processes than the run (--num-processes: the run had 2, this launch has 1)" in error


# ------------------------------------------------------------------------------------------ the step


def set_up_run(*args: object):
    """`setup` of a real run in this process (Accelerate's state is reset by the `accelerator` fixture)."""
    from sst2dist.train.config import parse_config
    from sst2dist.train.loop import make_accelerator, setup

    config = parse_config([*map(str, args), "--mixed-precision", "no"])
    return setup(config, make_accelerator(config))


def global_norm(parameters: list) -> float:
    import torch

    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters if p.grad is not None])))


def test_clipping_bounds_the_global_norm_of_everything_the_optimizer_steps(
    sst2_sample_dir: Path, tiny_model_dir: Path, tmp_path: Path, accelerator: object
) -> None:
    """--distill-hidden with a wider teacher adds a projection: its gradients count in --max-grad-norm too."""
    from sst2dist.train.step import train_step

    wide_teacher = make_tiny_model(tmp_path / "teacher", seed=1, hidden_size=48)
    options = tiny_run(sst2_sample_dir, tiny_model_dir, tmp_path / "run", "--max-steps", 1, "--max-grad-norm", 1)
    run, _ = set_up_run(*options, "--layer-teacher", wide_teacher, "--distill-hidden", 100)
    stepped = [p for group in run.optimizer.param_groups for p in group["params"]]
    assert len(stepped) > len(list(run.model.parameters()))  # the projection is stepped too
    norms, original_step = [], run.optimizer.step

    def recording_step(*args: object, **kwargs: object) -> object:
        norms.append(global_norm(stepped))
        return original_step(*args, **kwargs)

    run.optimizer.step = recording_step
    train_step(run, next(iter(run.train_loader)), 0)
    assert norms and norms[0] <= 1.0 + 1e-4


def test_a_step_that_fp16_overflow_skips_is_seen_as_skipped(accelerator: object) -> None:
    """Under a GradScaler (fp16) an overflowing step is skipped and Accelerate must see it, or the LR schedule
    advances over it; a real scaler (on the CPU) and an infinite gradient."""
    import torch
    from accelerate.optimizer import AcceleratedOptimizer

    from sst2dist.train.config import TrainConfig
    from sst2dist.train.step import make_optimizer

    model, scaler = torch.nn.Linear(4, 2), torch.amp.GradScaler("cpu")
    optimizer = AcceleratedOptimizer(make_optimizer([model], TrainConfig(), grad_scaling=True), scaler=scaler)
    before = model.weight.detach().clone()
    scaler.scale(model(torch.ones(1, 4)).sum() * float("inf")).backward()
    optimizer.step()
    assert optimizer.step_was_skipped and torch.equal(model.weight, before)


def test_the_short_last_accumulation_window_of_an_epoch_steps_on_its_mean_gradient(
    sst2_sample_dir: Path, tiny_model_dir: Path, tmp_path: Path, accelerator: object
) -> None:
    """3 batches with --grad-accum 2: the epoch's last window holds one batch, and the step sees that batch's own
    gradient, not half of it."""
    import torch

    from sst2dist.train.step import train_step

    options = tiny_run(sst2_sample_dir, tiny_model_dir, tmp_path / "run", "--max-steps", 2)
    run, _ = set_up_run(*options, "--max-train-samples", 48, "--grad-accum", 2, "--max-grad-norm", 0)
    run.model.eval()  # no dropout: the same batch gives the same gradient twice
    parameters = list(run.model.parameters())
    stepped, original_step = [], run.optimizer.step

    def recording_step(*args: object, **kwargs: object) -> object:
        if run.accelerator.sync_gradients:
            stepped.append(torch.cat([p.grad.flatten() for p in parameters]))
        return original_step(*args, **kwargs)

    run.optimizer.step = recording_step
    for index, batch in enumerate(run.train_loader):
        if index == 2:
            run.model(**batch).loss.backward()
            own_gradient = torch.cat([p.grad.flatten() for p in parameters])
            run.optimizer.zero_grad(set_to_none=True)
        train_step(run, batch, index)
    assert index == 2 and len(stepped) == 2
    assert torch.allclose(stepped[1], own_gradient, atol=1e-6)


# ------------------------------------------------------------------------------------------ options


def test_max_steps_zero_is_refused() -> None:
    from sst2dist.train.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="--max-steps must be >= 1, got 0"):
        parse_config(["--max-steps", "0"])


# ------------------------------------------------------------------------------------------ --init-layers


def make_tiny_distilbert(path: Path, layers: int = 3) -> Path:
    """A random DistilBERT classifier (32 wide) with a DistilBERT tokenizer over the packaged MiniLM's vocabulary."""
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, DistilBertTokenizerFast

    from sst2dist.modeling import DEFAULT_MODEL, ID2LABEL, LABEL2ID, resolve_model

    torch.manual_seed(0)
    tokenizer = DistilBertTokenizerFast(vocab_file=str(Path(resolve_model(DEFAULT_MODEL)) / "vocab.txt"))
    config = DistilBertConfig(
        vocab_size=tokenizer.vocab_size, dim=32, n_layers=layers, n_heads=2, hidden_dim=64,
        num_labels=2, id2label=ID2LABEL, label2id=LABEL2ID,
    )  # fmt: skip
    DistilBertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_init_layers_cuts_a_distilbert_student(sst2_sample_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoConfig

    teacher = make_tiny_distilbert(tmp_path / "distilbert")
    out = tmp_path / "run"
    assert in_process(*tiny_run(sst2_sample_dir, teacher, out, "--max-steps", 1, "--init-layers", "0,2")) == 0
    assert AutoConfig.from_pretrained(out / "model").num_hidden_layers == 2
    kept, original = load_file(out / "model" / "model.safetensors"), load_file(teacher / "model.safetensors")
    assert not [name for name in kept if name.startswith("distilbert.transformer.layer.2.")]
    name = "distilbert.transformer.layer.1.attention.q_lin.weight"  # was layer 2; 1 step of training moves it
    assert (kept[name] - original[name.replace("layer.1", "layer.2")]).abs().max() < 0.05


def test_init_layers_refuses_an_architecture_without_a_layer_list() -> None:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from sst2dist.modeling import ModelNotFoundError, keep_layers

    model = GPT2ForSequenceClassification(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(ModelNotFoundError, match="--init-layers keeps layers of BERT-style encoders"):
        keep_layers(model, [0])


def test_resume_refuses_a_machine_where_auto_resolves_to_another_precision(
    sst2_sample_dir: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """`--mixed-precision auto` started where the CPU has bf16, resumed where it has not: the option is the same,
    the computation is not. Passing the run's precision explicitly continues it. (The other CPU is simulated by its
    feature check: this machine has only one kind.)"""
    from accelerate.state import AcceleratorState, GradientState

    def launch(*extra: object) -> int:
        try:
            return main([*map(str, tiny_run(sst2_sample_dir, tiny_model_dir, out, "--max-steps", 2, *extra))])
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()

    out = tmp_path / "run"
    monkeypatch.setattr("sst2dist.environment.supports_bf16", lambda: True)
    assert launch("--mixed-precision", "auto") == 0
    monkeypatch.setattr("sst2dist.environment.supports_bf16", lambda: False)
    capsys.readouterr()
    assert launch("--mixed-precision", "auto", "--resume") == 1
    error = capsys.readouterr().err
    assert "(--mixed-precision: the run had bf16, this launch has no)" in error
    assert launch("--mixed-precision", "bf16", "--resume") == 0


# ------------------------------------------------------------------------------------------ review (rev25)


def with_wide_weights(model_dir: Path, seed: int = 0) -> Path:
    """The random model's linear weights drawn wide enough that its predictions depend on every layer."""
    import torch

    from sst2dist.modeling import load_model

    model = load_model(str(model_dir))
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.weight.data.normal_(0, 0.3)
    model.save_pretrained(model_dir)
    return model_dir


def test_eval_only_evaluates_the_layers_init_layers_keeps(sst2_sample_dir: Path, tmp_path: Path) -> None:
    import shutil

    from sst2dist.modeling import keep_layers, load_model

    full = with_wide_weights(make_tiny_model(tmp_path / "full"))
    cut = load_model(str(full))
    keep_layers(cut, [0])
    cut.save_pretrained(tmp_path / "cut")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(full / name, tmp_path / "cut" / name)

    def accuracy(model_dir: Path, *extra: object) -> float:
        out = tmp_path / f"eval-{len(list(tmp_path.iterdir()))}"
        options = ["--data", sst2_sample_dir, "--model", model_dir, "--output-dir", out, "--eval-only"]
        assert in_process(*options, *extra) == 0
        return json.loads((out / "eval_metrics.json").read_text())["eval_accuracy"]

    assert accuracy(full) != accuracy(tmp_path / "cut")  # the cut model answers otherwise: the check means something
    assert accuracy(full, "--init-layers", 0) == accuracy(tmp_path / "cut")


def test_resuming_a_run_that_stopped_early_trains_no_further(
    sst2_sample_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    options = tiny_run(sst2_sample_dir, tiny_model_dir, out, "--max-steps", 20, "--eval-every", 1)
    options += ["--early-stopping-patience", 1, "--save-every", 1, "--keep-checkpoints", 1]
    assert in_process(*options) == 0
    stopped = json.loads((out / "metrics.json").read_text())
    assert stopped["stopped_early"] and stopped["steps"] < 20
    assert in_process(*options, "--resume") == 0
    again = json.loads((out / "metrics.json").read_text())
    assert (again["steps"], again["stopped_early"]) == (stopped["steps"], True)
