"""The prune stage on tiny random BERT and MPNet models: Fisher importance against a finite-difference hand
computation, pruning against masking, the saved folder reloaded and exported through the gate, the cost target
counted by torch's FLOP counter, and the refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import SHORT_RUN, make_tiny_model, make_tiny_mpnet, resume_copy, run_train
from torch.utils.flop_counter import FlopCounterMode

from sst2dist.bench.measure import flops_counter
from sst2dist.cli import main
from sst2dist.distill.loss import attention_loss
from sst2dist.modeling import load_classifier_model, load_model, load_tokenizer
from sst2dist.prune.flops import UnitCosts
from sst2dist.prune.masks import fisher_importance, masked, unit_masks
from sst2dist.pruned import kept_heads, prune_model

SENTENCES = ["a gripping, funny film", "a dull mess that goes nowhere", "not bad at all", "tedious"]
# Kept heads and FFN neurons of the 2-layer models below: layer 0 loses one head and most neurons, layer 1 loses
# its whole attention block and its whole FFN.
KEPT_HEADS = [[0, 2, 3], []]
KEPT_NEURONS = [[1, 4, 5, 9, 30, 63], []]


def with_large_weights(path: Path) -> Path:
    """The random model's linear weights drawn 10x wider than BERT's initialisation: its logits then depend on
    every head and neuron enough for the comparisons below to mean something."""
    model = load_classifier_model(path)  # its own labels
    torch.manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.weight.data.normal_(0, 0.2)
            module.bias.data.normal_(0, 0.2)
    model.save_pretrained(path)
    return path


def tiny_bert(path: Path) -> Path:
    return with_large_weights(make_tiny_model(path, hidden_size=32, heads=4))  # 4 heads, 8 wide


def tiny_mpnet(path: Path) -> Path:
    return with_large_weights(make_tiny_mpnet(path, hidden_size=32, heads=4))


MAKERS = {"bert": tiny_bert, "mpnet": tiny_mpnet}


@pytest.fixture(params=sorted(MAKERS))
def source(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return MAKERS[request.param](tmp_path_factory.mktemp(request.param) / "model")


def batch(source: Path, sentences: list[str] = SENTENCES, labels: list[int] | None = None) -> dict:
    encoded = load_tokenizer(str(source))(sentences, padding=True, return_tensors="pt")
    return {**encoded, "labels": torch.tensor(labels or [1, 0, 1, 0][: len(sentences)])}


def logits(model, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**{k: v for k, v in inputs.items() if k != "labels"}).logits


def masks_keeping(model, heads: list[list[int]], neurons: list[list[int]]):
    head_masks, neuron_masks = unit_masks(model, fill=0.0)
    for layer, kept in enumerate(heads):
        head_masks[layer, kept] = 1.0
    for layer, kept in enumerate(neurons):
        neuron_masks[layer][kept] = 1.0
    return head_masks, neuron_masks


# ------------------------------------------------------------------------------------------ importance


def scaled_loss(model, inputs: dict, weight: torch.nn.Parameter, columns: slice | int, scale: float) -> float:
    """The loss with some input columns of one linear layer scaled: what a mask value of `scale` on that unit does."""
    saved = weight.data[:, columns].clone()
    weight.data[:, columns] *= scale
    with torch.no_grad():
        loss = model(**inputs).loss.item()
    weight.data[:, columns] = saved
    return loss


def test_fisher_importance_equals_a_finite_difference_hand_computation(source: Path) -> None:
    model = load_model(str(source)).double().eval()
    batches = [batch(source, SENTENCES[:2], [1, 0]), batch(source, SENTENCES[2:], [1, 0])]
    heads, neurons = fisher_importance(model, batches)

    epsilon, layers = 1e-5, model.base_model.encoder.layer
    width = model.config.hidden_size // model.config.num_attention_heads
    output_of = {"bert": lambda layer: layer.attention.output.dense, "mpnet": lambda layer: layer.attention.attn.o}
    attention_output = output_of[model.config.model_type]

    def fisher(weight: torch.nn.Parameter, columns: slice | int) -> float:
        gradients = [
            (scaled_loss(model, b, weight, columns, 1 + epsilon) - scaled_loss(model, b, weight, columns, 1 - epsilon))
            / (2 * epsilon)
            for b in batches
        ]
        return sum(g**2 for g in gradients)

    for layer_index, layer in enumerate(layers):
        for head in range(model.config.num_attention_heads):
            columns = slice(head * width, (head + 1) * width)
            expected = fisher(attention_output(layer).weight, columns)
            assert heads[layer_index, head].item() == pytest.approx(expected, rel=1e-6, abs=1e-14)
        for neuron in (0, 7, 63):
            expected = fisher(layer.output.dense.weight, neuron)
            assert neurons[layer_index][neuron].item() == pytest.approx(expected, rel=1e-6, abs=1e-14)
    assert heads.min() > 0 and all(n.max() > 0 for n in neurons)  # nothing trivially zero
    assert all(p.requires_grad for p in model.parameters())  # the model is left trainable


# ------------------------------------------------------------------------------------------ pruning = masking


def test_the_pruned_model_computes_what_the_masked_model_does(source: Path) -> None:
    model, inputs = load_model(str(source)), batch(source)
    full = logits(model, inputs)
    with masked(model, *masks_keeping(model, KEPT_HEADS, KEPT_NEURONS)):
        expected = logits(model, inputs)
    assert (full - expected).abs().max() > 0.05  # the masks change the outputs: the comparison means something

    prune_model(model, KEPT_HEADS, KEPT_NEURONS)
    torch.testing.assert_close(logits(model, inputs), expected, atol=1e-5, rtol=0)
    first = model.base_model.encoder.layer[0]
    assert first.intermediate.dense.out_features == len(KEPT_NEURONS[0])
    assert model.config.intermediate_sizes == [6, 0]
    assert {layer: sorted(heads) for layer, heads in model.config.pruned_heads.items()} == {0: [1], 1: [0, 1, 2, 3]}


def test_the_pruned_folder_reloads_to_the_same_logits(source: Path, tmp_path: Path) -> None:
    model, inputs = load_model(str(source)), batch(source)
    prune_model(model, KEPT_HEADS, KEPT_NEURONS)
    expected = logits(model, inputs)
    model.save_pretrained(tmp_path / "pruned")
    load_tokenizer(str(source)).save_pretrained(tmp_path / "pruned")

    reloaded = load_model(str(tmp_path / "pruned"))
    torch.testing.assert_close(logits(reloaded, inputs), expected, atol=1e-6, rtol=0)
    # with output_attentions (attention distillation), the layer without heads reports None
    with torch.no_grad():
        attentions = reloaded(**inputs, output_attentions=True).attentions
    assert attentions[1] is None and attentions[0].shape[1] == len(KEPT_HEADS[0])


def test_a_bert_with_only_heads_pruned_reloads_with_plain_from_pretrained(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    source = tiny_bert(tmp_path / "bert")
    model, inputs = load_model(str(source)), batch(source)
    prune_model(model, [[1, 3], [0, 1, 2]], [list(range(64))] * 2)
    model.save_pretrained(tmp_path / "pruned")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pruned")
    torch.testing.assert_close(logits(plain, inputs), logits(model, inputs), atol=1e-6, rtol=0)


def test_cutting_layers_from_a_pruned_model_keeps_their_pruned_shapes(tmp_path: Path) -> None:
    from sst2dist.modeling import keep_layers

    source = tiny_bert(tmp_path / "bert")
    model, inputs = load_model(str(source)), batch(source)
    prune_model(model, [[0, 1, 2, 3], [2]], [list(range(64)), [3, 4]])
    keep_layers(model, [1])
    assert model.config.intermediate_sizes == [2] and model.config.pruned_heads == {0: [0, 1, 3]}
    model.save_pretrained(tmp_path / "cut")
    torch.testing.assert_close(logits(load_model(str(tmp_path / "cut")), inputs), logits(model, inputs))


# ------------------------------------------------------------------------------------------ the command


def encoder_flops(model, length: int) -> int:
    """FLOPs torch counts in the encoder for one sequence (output_attentions: BERT's SDPA kernel is not counted)."""
    ids = torch.randint(5, 1000, (1, length))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=ids, output_attentions=True)
    name = f"{type(model).__name__}.{model.base_model_prefix}.encoder"
    return sum(counter.get_flop_counts()[name].values())


def test_prune_meets_the_cost_target_counted_by_torch_and_exports_through_the_gate(
    source: Path, sst2_sample_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pruned"
    args = ["prune", str(source), "--output", str(out), "--cost", "0.4", "--data", str(sst2_sample_dir)]
    result = CliRunner().invoke(main, [*args, "--samples", "32", "--batch-size", "16"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "prune.json").read_text())

    pruned, unpruned = load_model(str(out)), load_model(str(source))
    length = summary["flops_length"]
    counted = encoder_flops(pruned, length) / encoder_flops(unpruned, length)
    assert counted == pytest.approx(summary["cost"], rel=1e-9)
    assert counted <= 0.4
    head_share = UnitCosts.of(unpruned.config, length).head / summary["source_encoder_flops"]
    assert summary["cost"] > 0.4 - head_share  # it stops once the target is met: within one head's cost of it
    assert sum(summary["heads_kept"]) < 8 and sum(summary["neurons_kept"]) < 128

    bundle = tmp_path / "bundle"
    export = ["export-onnx", str(out), "--output", str(bundle), "--data", str(sst2_sample_dir), "--openvino", "off"]
    result = CliRunner().invoke(main, [*export, "--max-verify-samples", "64", "--max-accuracy-drop", "100"])
    assert result.exit_code == 0, result.output  # a tiny random model: its int8 accuracy means nothing
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert all(entry["passed"] for entry in manifest["variants"].values())
    assert manifest["variants"]["fp32"]["verification"]["max_abs_logit_diff"] < 1e-4


THREE_LABELS = ("bad", "good", "meh")


def write_three_class_csv(folder: Path) -> Path:
    """train.csv and dev.csv with a `text` column and the label in a `rating` column."""
    folder.mkdir()
    rows = list(zip(SENTENCES[:3], THREE_LABELS, strict=True))
    for name, repeat in (("train", 4), ("dev", 2)):
        with (folder / f"{name}.csv").open("w", newline="") as file:
            csv.writer(file).writerows([("text", "rating"), *rows * repeat])
    return folder


def kept_neurons(pruned, source) -> list[list[int]]:
    """The source's FFN neurons whose rows the pruned model's first FFN matrix holds (prune slices them out)."""
    kept = []
    for new, old in zip(pruned.base_model.encoder.layer, source.base_model.encoder.layer, strict=True):
        rows = new.intermediate.dense.weight
        kept.append([n for n, row in enumerate(old.intermediate.dense.weight) if (rows == row).all(dim=1).any()])
    return kept


def test_prune_keeps_a_three_class_models_labels_and_reads_the_named_columns(
    sst2_sample_dir: Path, tmp_path: Path
) -> None:
    source = with_large_weights(make_tiny_model(tmp_path / "model", hidden_size=32, heads=4, labels=THREE_LABELS))
    data, out = write_three_class_csv(tmp_path / "data"), tmp_path / "pruned"
    args = ["prune", str(source), "--output", str(out), "--cost", "0.4", "--samples", "12", "--batch-size", "4"]
    columns = ["--text-column", "text", "--label-column", "rating", "--labels", "meh,bad,good"]  # by name
    result = CliRunner().invoke(main, [*args, "--data", str(data), *columns])
    assert result.exit_code == 0, result.output

    pruned, unpruned = load_classifier_model(out), load_classifier_model(source)
    assert pruned.config.id2label == dict(enumerate(THREE_LABELS))
    heads = [kept_heads(pruned.config, layer) for layer in range(2)]
    neurons = kept_neurons(pruned, unpruned)
    assert sum(map(len, heads)) < 8 and [len(n) for n in neurons] == pruned.config.intermediate_sizes
    inputs = batch(source)
    with masked(unpruned, *masks_keeping(unpruned, heads, neurons)):
        expected = logits(unpruned, inputs)
    torch.testing.assert_close(logits(pruned, inputs), expected, atol=1e-5, rtol=0)

    refused = CliRunner().invoke(main, [*args, "--data", str(sst2_sample_dir), "--force"])
    assert refused.exit_code == 1 and refused.output.count("\n") == 1, refused.output
    assert "3 labels (bad, good, meh)" in refused.output and "pass the --data it was trained on" in refused.output
    torch.testing.assert_close(logits(load_classifier_model(out), inputs), expected, atol=1e-5, rtol=0)  # untouched


def test_an_unsupported_architecture_is_refused_in_one_sentence(sst2_sample_dir: Path, tmp_path: Path) -> None:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    source = tmp_path / "distilbert"
    config = DistilBertConfig(vocab_size=100, dim=32, n_layers=1, n_heads=2, hidden_dim=64)
    DistilBertForSequenceClassification(config).save_pretrained(source)
    args = ["prune", str(source), "--output", str(tmp_path / "out"), "--cost", "0.5", "--data", str(sst2_sample_dir)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "handles BERT and MPNet encoders, not 'distilbert'" in result.output
    assert not (tmp_path / "out").exists()


def test_a_base_encoder_is_refused_not_ranked_through_a_random_head(sst2_sample_dir: Path, tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    source = tiny_bert(tmp_path / "classifier")
    BertModel(BertConfig.from_pretrained(source)).save_pretrained(tmp_path / "encoder")
    load_tokenizer(str(source)).save_pretrained(tmp_path / "encoder")
    args = ["prune", str(tmp_path / "encoder"), "--output", str(tmp_path / "out"), "--cost", "0.5"]
    result = CliRunner().invoke(main, [*args, "--data", str(sst2_sample_dir)])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "holds BertModel, not a fine-tuned classifier" in result.output
    assert not (tmp_path / "out").exists()


def test_bad_costs_a_pruned_source_and_an_occupied_output_are_refused(sst2_sample_dir: Path, tmp_path: Path) -> None:
    source = tiny_bert(tmp_path / "bert")
    runner = CliRunner()

    def prune(*extra: str) -> str:
        result = runner.invoke(main, ["prune", str(source), "--data", str(sst2_sample_dir), *extra])
        assert result.exit_code != 0
        return result.output

    assert "--cost must be in (0, 1]" in prune("--output", str(tmp_path / "a"), "--cost", "0")
    assert "give --cost F" in prune("--output", str(tmp_path / "a"))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    # --force replaces a pruned model, never a folder of something else (as export-onnx refuses a non-bundle)
    for force in ((), ("--force",)):
        refusal = prune("--output", str(tmp_path / "taken"), "--cost", "0.5", *force)
        assert "is a non-empty folder that is not a pruned model" in refusal and refusal.count("\n") == 1
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    # --force replaces --output, so an --output that holds the source (its run folder) would delete the source
    assert "holds the source model" in prune("--output", str(tmp_path), "--cost", "0.5", "--force")
    assert load_model(str(source)) is not None

    model = load_model(str(source))
    prune_model(model, [[0], [0]], [list(range(64))] * 2)
    model.save_pretrained(tmp_path / "pruned")
    load_tokenizer(str(source)).save_pretrained(tmp_path / "pruned")
    source = tmp_path / "pruned"
    assert "already pruned" in prune("--output", str(tmp_path / "b"), "--cost", "0.5")


def test_a_source_with_damaged_weights_is_refused_in_one_sentence(sst2_sample_dir: Path, tmp_path: Path) -> None:
    """A half-written model.safetensors or tokenizer.json raises safetensors' or tokenizers' own error, not an
    OSError: refused like export-onnx refuses it, nothing written."""
    import shutil

    whole = make_tiny_model(tmp_path / "whole")
    for damaged in ("model.safetensors", "tokenizer.json"):
        source = Path(shutil.copytree(whole, tmp_path / damaged))
        (source / damaged).write_bytes((source / damaged).read_bytes()[:1000])
        output = tmp_path / f"pruned-{damaged}"
        arguments = ["prune", str(source), "--output", str(output), "--cost", "0.5", "--data", str(sst2_sample_dir)]
        result = CliRunner().invoke(main, arguments)
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
        assert f"could not load the model in {source}" in result.output and result.output.count("\n") == 1
        assert not output.exists()


# ------------------------------------------------------------------------------------------ recovery


def test_attention_matching_pairs_a_pruned_students_heads_with_their_source_heads() -> None:
    teacher = torch.tensor([[[0.5, 0.5]], [[0.9, 0.1]], [[0.2, 0.8]]])[None]  # (batch 1, 3 heads, 1 query, 2 keys)
    student = torch.tensor([[[0.9, 0.1]], [[0.2, 0.8]]])[None]  # kept the teacher's heads 1 and 2, unchanged
    mask = torch.tensor([[1]])
    assert attention_loss([student, None], [teacher, teacher], [0, 1, 2], mask, [[1, 2], []]).item() == 0.0
    swapped = attention_loss([student, None], [teacher, teacher], [0, 1, 2], mask, [[2, 1], []]).item()
    assert swapped > 0.1  # the pairing decides the loss


def pruned_bert_folder(tmp_path: Path) -> Path:
    """`tmp_path / "pruned"`: a tiny BERT (`tmp_path / "source"`) pruned to KEPT_HEADS / KEPT_NEURONS, saved."""
    source = tiny_bert(tmp_path / "source")
    model = load_model(str(source))
    prune_model(model, KEPT_HEADS, KEPT_NEURONS)
    model.save_pretrained(tmp_path / "pruned")
    load_tokenizer(str(source)).save_pretrained(tmp_path / "pruned")
    return tmp_path / "pruned"


def test_int8_finds_a_pruned_models_ffn_down_projections_by_what_feeds_them(
    sst2_sample_dir: Path, tmp_path: Path
) -> None:
    import onnx

    from sst2dist.export.bundle import export_bundle
    from sst2dist.export.int8 import down_projections

    options = {"data": str(sst2_sample_dir), "quantize": "none", "optimize": "none", "openvino": "off"}
    export_bundle(pruned_bert_folder(tmp_path), tmp_path / "bundle", max_verify_samples=8, **options)
    graph_path = tmp_path / "bundle" / "model.onnx"
    names = [n.name for n in onnx.load(str(graph_path), load_external_data=False).graph.node if n.op_type == "MatMul"]
    # 6 neurons and 3 heads of 8 are narrower than the 32-wide hidden state: a weight-shape rule (in > out) took the
    # query/key/value projections for down-projections and missed the FFN output
    assert down_projections(graph_path) == [n for n in names if n.endswith("layer.0/output/dense/MatMul")]


def test_the_bench_flop_count_follows_the_pruned_shapes(source: Path) -> None:
    model = load_model(str(source))
    prune_model(model, KEPT_HEADS, KEPT_NEURONS)
    config = json.loads(model.config.to_json_string())
    pooler = 2 * 32 * 32
    counted = encoder_flops(model, 12)
    assert flops_counter(config)(1, 12) - pooler == counted == UnitCosts.of(model.config, 12).encoder([3, 0], [6, 0])


def test_the_bench_pytorch_baseline_runs_a_pruned_folder_as_training_saved_it(tmp_path: Path) -> None:
    """`bench --model PRUNED` times PyTorch on the pruned shapes (a plain from_pretrained refuses narrowed FFNs)."""
    from sst2dist.bench.measure import TorchBackend

    pruned = pruned_bert_folder(tmp_path)
    backend = TorchBackend("torch-fp32", str(pruned), threads=1)
    expected = logits(load_classifier_model(pruned), batch(pruned))
    torch.testing.assert_close(torch.from_numpy(backend.run(backend.encode(SENTENCES))), expected, atol=1e-6, rtol=0)


def test_prune_json_records_the_sentences_it_measured_not_the_ones_asked_for(
    sst2_sample_dir: Path, tmp_path: Path
) -> None:
    source, out = tiny_bert(tmp_path / "bert"), tmp_path / "pruned"
    args = ["prune", str(source), "--output", str(out), "--cost", "0.5", "--data", str(sst2_sample_dir)]
    result = CliRunner().invoke(main, [*args, "--samples", "100000", "--batch-size", "32"])
    assert result.exit_code == 0, result.output
    train_rows = len((sst2_sample_dir / "train.tsv").read_text().splitlines()) - 1  # its header
    assert json.loads((out / "prune.json").read_text())["samples"] == train_rows


@pytest.mark.slow
def test_a_pruned_student_recovers_by_matching_its_sources_hidden_states_and_attentions(
    sst2_sample_dir: Path, tmp_path: Path
) -> None:
    pruned_bert_folder(tmp_path)
    source = tmp_path / "source"
    run = tmp_path / "run"
    options = ["--data", sst2_sample_dir, "--model", tmp_path / "pruned", "--layer-teacher", source]
    result = run_train(*options, "--output-dir", run, "--distill-hidden", 1, "--distill-attention", 1, *SHORT_RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    terms = [r for r in logged if "loss_hidden" in r]
    assert terms and all(r["loss_hidden"] > 0 and r["loss_attention"] > 0 for r in terms)
    trained = load_model(str(run / "model"))
    assert (
        trained.config.intermediate_sizes == [6, 0]
        and trained.base_model.encoder.layer[0].attention.self.query.out_features == 24
    )


@pytest.mark.slow
def test_a_pruned_model_with_empty_blocks_trains_on_two_processes(sst2_sample_dir: Path, tmp_path: Path) -> None:
    """DDP needs a gradient for every trainable parameter; an emptied block's zero-size matrices get none."""
    import subprocess
    import sys

    pruned_bert_folder(tmp_path)
    run = tmp_path / "run"
    options = ["--data", sst2_sample_dir, "--model", tmp_path / "pruned", "--output-dir", run, "--max-steps", 2]
    options += ["--batch-size", 8, "--eval-every", 0, "--save-every", 0, "--mixed-precision", "no"]
    command = [Path(sys.executable).parent / "sst2dist", "train", "--num-processes", 2, *options]
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["num_processes"] == 2
    trained = load_model(str(run / "model"))
    assert trained.config.intermediate_sizes == [6, 0]


@pytest.mark.slow
def test_a_pruned_model_with_empty_blocks_resumes_to_the_same_weights(sst2_sample_dir: Path, tmp_path: Path) -> None:
    """Every zero-size tensor shares one null storage, and Accelerate's checkpoints keep one tensor per storage."""
    from safetensors.torch import load_file

    pruned_bert_folder(tmp_path)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"

    def options(out: Path) -> list[object]:
        return ["--data", sst2_sample_dir, "--model", tmp_path / "pruned", "--output-dir", out, *SHORT_RUN]

    result = run_train(*options(straight))
    assert result.returncode == 0, result.stderr[-3000:]
    result = resume_copy(straight, resumed, 3, options(resumed))
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = (load_file(run / "model" / "model.safetensors") for run in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    assert load_model(str(resumed / "model")).config.intermediate_sizes == [6, 0]


def test_the_make_variables_prune_md_names_are_the_makefiles() -> None:
    """docs/prune.md tells users which Makefile variables tune `make prune`: each must exist there."""
    import re

    root = Path(__file__).resolve().parents[2]
    named = set(re.findall(r"`([A-Z][A-Z0-9]*_[A-Z0-9_]+)`", (root / "docs" / "prune.md").read_text()))
    defined = set(re.findall(r"^([A-Z][A-Z0-9_]*)\s*[?:]?=", (root / "Makefile").read_text(), re.MULTILINE))
    assert named and named <= defined, sorted(named - defined)


def test_make_re_exports_a_model_retrained_into_the_same_folder(tmp_path: Path) -> None:
    """`make prune`/`make distill` skip an export whose bundle came from this model folder; a model retrained into
    the same folder (a run deleted and run again) has new weights, and its stale bundle must not be benched."""
    import hashlib
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    model, bundle, bin_dir = tmp_path / "model", tmp_path / "bundle", tmp_path / "bin"
    for folder in (model, bundle, bin_dir):
        folder.mkdir()
    (model / "model.safetensors").write_bytes(b"first training")
    digest = hashlib.sha256(b"first training").hexdigest()
    source = {"model_dir": str(model.resolve()), "weights": [{"file": "model.safetensors", "sha256": digest}]}
    (bundle / "manifest.json").write_text(json.dumps({"source": source}))
    (bin_dir / "python").symlink_to(sys.executable)
    (bin_dir / "sst2dist").write_text('#!/bin/sh\necho "export-onnx ran"\n')
    (bin_dir / "sst2dist").chmod(0o755)
    stage = tmp_path / "stage.mk"
    stage.write_text(f"include {root / 'Makefile'}\nstage:\n\t$(call export_stage,{model},{bundle})\n")

    def run_stage() -> str:
        command = ["make", "--no-print-directory", "-f", str(stage), "stage", f"BIN={bin_dir}", "DATA=x"]
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, env=os.environ, check=True)
        return done.stdout

    assert "skipped" in run_stage() and "export-onnx ran" not in run_stage()
    (model / "model.safetensors").write_bytes(b"retrained")
    assert "export-onnx ran" in run_stage()
