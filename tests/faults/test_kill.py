"""kill -9 at random moments of every long stage, from outside (no hooks in the code): what is left is either the
previous artifact, nothing, or something the next run continues from, and resuming ends bit-identical to a run
that was never interrupted."""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fault_harness import BIN, ENV, Moment, after, appears, appears_new, kill_at, leftovers, run, snapshot, start

from sst2dist.train.checkpoint import latest_checkpoint

SEED = 19  # the number: every moment below is drawn from it, so a failure replays with the same plan
SAMPLE_TRAIN = Path(__file__).resolve().parents[1] / "data" / "sst2" / "train.tsv"


def train_command(*args: object) -> list[object]:
    return [sys.executable, "-m", "sst2dist.train", *args]


def write_data(folder: Path, rows: int) -> Path:
    """`rows` training sentences (the sample's, numbered so none repeats) and the sample's 60 as validation:
    enough rows that scoring them with the teacher takes a moment worth killing."""
    sample = SAMPLE_TRAIN.read_text(encoding="utf-8").splitlines()[1:]
    folder.mkdir(parents=True)
    lines = [
        f"{text} {i // len(sample)}\t{label}"
        for i in range(rows)
        for text, label in [sample[i % len(sample)].split("\t")]
    ]
    (folder / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(lines) + "\n", encoding="utf-8")
    (folder / "dev.tsv").write_text(SAMPLE_TRAIN.read_text(encoding="utf-8"), encoding="utf-8")
    return folder


def logged_step(log: Path, offset: int) -> int:
    """The last step log.jsonl records after byte `offset` (what this launch has done), 0 before any."""
    if not log.is_file():
        return 0
    with log.open("rb") as handle:
        handle.seek(offset)
        lines = handle.read().decode("utf-8", errors="replace").splitlines()
    steps = [json.loads(line).get("step", 0) for line in lines if line.endswith("}")]
    return max(steps, default=0)


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not (a[k] == b[k]).all()]
    assert not different, f"not bit-identical: {different[:5]}"


# ---------------------------------------------------------------------------------------------- train


def test_resume_after_a_kill_before_the_first_checkpoint_starts_the_same_run_over(tmp_path: Path, accelerator) -> None:
    """A kill before the first checkpoint leaves train_config.json (and maybe log lines, a best model): --resume
    starts that run over instead of sending the user between --resume and --overwrite."""
    from dataclasses import asdict

    from sst2dist.train.config import ConfigError, TrainConfig
    from sst2dist.train.run_folder import prepare_output_dir

    (tmp_path / "train_config.json").write_text(json.dumps(asdict(TrainConfig(output_dir=str(tmp_path)))))
    (tmp_path / "log.jsonl").write_text('{"step": 1, "loss": 0.7}\n')
    with pytest.raises(ConfigError, match=r"--resume with different options \(--lr 5e-05 -> 0.0001\)"):
        prepare_output_dir(TrainConfig(output_dir=str(tmp_path), resume=True, lr=1e-4), accelerator)
    assert prepare_output_dir(TrainConfig(output_dir=str(tmp_path), resume=True), accelerator) is None
    assert not (tmp_path / "log.jsonl").exists() and (tmp_path / "train_config.json").is_file()

    (tmp_path / "metrics.json").write_text("{}")  # a finished run that kept no checkpoint: nothing to resume
    with pytest.raises(ConfigError, match="no complete checkpoint in"):
        prepare_output_dir(TrainConfig(output_dir=str(tmp_path), resume=True), accelerator)


def train_moments(rng: random.Random, out: Path, cache: Path, total: int) -> list[Callable[[int], Moment]]:
    """The kill plan, in run order: while the teacher's logits are scored and joined, at plain random times,
    at steps spread over the run, inside checkpoint and best-model writes, and in the last evaluation and save.
    Each is made at launch time from the byte offset where this launch's log.jsonl lines begin."""
    log, checkpoints = out / "log.jsonl", out / "checkpoints"

    def step_reached(step: int, offset: int) -> Callable[[], bool]:
        return lambda: logged_step(log, offset) >= step

    def writing_checkpoint(step: int, offset: int) -> Callable[[], bool]:
        # A temporary checkpoint folder after `step`; two steps on, the write is surely over: kill anyway.
        tmp = appears(checkpoints, ".tmp-step-*")
        return lambda: (logged_step(log, offset) >= step and tmp()) or logged_step(log, offset) >= step + 2

    def before_the_first_step(offset: int) -> Callable[[], bool]:
        # A plain random time, or the first step if that comes sooner: on a fast CPU all the steps may fit in the wait.
        due, first_step = after(rng.uniform(0.5, 6.0)), step_reached(1, offset)
        return lambda: due() or first_step()

    # The scoring's working files are hidden names in the cache folder; the logits file is the only visible one.
    scoring = lambda: appears(cache, ".*")() or appears(cache, "*.npz")()  # noqa: E731
    joined = lambda: appears(cache, ".*/*")() or appears(cache, "*.npz")()  # noqa: E731
    # The first evaluation (step 5) always writes the best model: kill while it does (or just after, when the
    # few milliseconds of the write slipped between two looks).
    best_model = lambda o: lambda: appears(out, ".tmp-model")() or logged_step(log, o) >= 6  # noqa: E731
    plan: list[Callable[[int], Moment]] = [
        lambda _: Moment("scoring the teacher's logits", scoring, rng.uniform(0.0, 1.0)),
        lambda _: Moment("joining and writing the logits", joined, rng.uniform(0.0, 0.01)),
        lambda o: Moment("start-up or loading", before_the_first_step(o), 0.0),
        lambda o: Moment("writing the best model", best_model(o), rng.uniform(0.0, 0.01)),
    ]
    for i, step in enumerate(sorted(rng.sample(range(6, total), 6))):
        if i % 2:
            name = f"writing the checkpoint after step {step}"
            plan.append(lambda o, s=step, n=name: Moment(n, writing_checkpoint(s, o), rng.uniform(0, 0.01)))
        else:
            plan.append(lambda o, s=step: Moment(f"around step {s}", step_reached(s, o), rng.uniform(0.0, 0.1)))
    plan.append(lambda o: Moment("the last evaluation and save", step_reached(total, o), rng.uniform(0.0, 0.3)))
    return plan


@pytest.mark.slow
def test_train_with_a_teacher_killed_at_eleven_moments_ends_bit_identical(tiny_model_dir: Path, tmp_path: Path) -> None:
    """python -m sst2dist.train distilling from a tiny teacher: SIGKILLed 11 times (logit scoring and caching,
    start-up, steps, checkpoint and model writes, the end), `--resume`d after each; the weights, the best model
    and the logits cache equal those of a run never killed."""
    from conftest import make_tiny_model

    data = write_data(tmp_path / "data", rows=3000)
    teacher = make_tiny_model(tmp_path / "teacher", seed=3)
    total = 24

    def options(out: Path, cache: Path) -> list[object]:
        return [
            "--data", data, "--model", tiny_model_dir, "--teacher", teacher, "--teacher-cache", cache,
            "--output-dir", out, "--max-train-samples", 96, "--max-eval-samples", 60, "--batch-size", 8,
            "--max-steps", total, "--eval-every", 5, "--save-every", 2, "--keep-checkpoints", 3, "--log-every", 1,
            "--lr", 1e-3, "--distill-alpha", 0.5,
        ]  # fmt: skip

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(train_command(*options(straight, tmp_path / "cache-straight")))

    cache = tmp_path / "cache"
    moments, landed = train_moments(random.Random(SEED), killed, cache, total), []
    for make in moments:
        offset = (killed / "log.jsonl").stat().st_size if (killed / "log.jsonl").exists() else 0
        resume = ["--resume"] if (killed / "train_config.json").exists() else []
        process = start(train_command(*options(killed, cache), *resume), log=tmp_path / "killed.log")
        moment = make(offset)
        assert kill_at(process, moment), f"the run ended before '{moment.name}'"
        checkpoint = latest_checkpoint(killed)
        landed.append((moment.name, checkpoint.name if checkpoint else None, [p.name for p in leftovers(killed)]))
    run(train_command(*options(killed, cache), "--resume"))

    print(*landed, sep="\n")  # pytest -s shows where each kill landed
    assert len(landed) >= 10
    assert len({checkpoint for _, checkpoint, _ in landed}) >= 5, landed  # spread over the run
    assert any(any(name.startswith(".tmp-") for name in left) for _, _, left in landed), landed  # mid-write
    final = f"step-{total:08d}"
    assert_same_weights(weights(straight / "checkpoints" / final), weights(killed / "checkpoints" / final))
    assert_same_weights(weights(straight / "model"), weights(killed / "model"))
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (straight, killed))
    assert (a["best_accuracy"], a["best_step"], a["steps"]) == (b["best_accuracy"], b["best_step"], b["steps"])
    [logits] = list(cache.glob("*.npz"))
    assert logits.read_bytes() == (tmp_path / "cache-straight" / logits.name).read_bytes()
    assert not list(cache.glob(".*")), "the logits' temporary files are cleaned up by the next run"


@pytest.mark.slow
def test_two_processes_killed_as_a_group_three_times_end_bit_identical(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`sst2dist train --num-processes 2` (torchrun and both workers, one process group) SIGKILLed at three
    moments spread over the run, then `--resume`d: the same weights as two processes never killed."""
    total = 12

    def command(out: Path, *extra: object) -> list[object]:
        return [
            BIN / "sst2dist", "train", "--num-processes", 2, "--data", SAMPLE_TRAIN.parent, "--model", tiny_model_dir,
            "--output-dir", out, "--batch-size", 4, "--max-steps", total, "--eval-every", 4, "--save-every", 2,
            "--keep-checkpoints", 2, "--log-every", 1, "--lr", 1e-3, "--mixed-precision", "no", *extra,
        ]  # fmt: skip

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(command(straight))
    rng, landed = random.Random(SEED), []
    for step in sorted(rng.sample(range(2, total), 3)):
        offset = (killed / "log.jsonl").stat().st_size if (killed / "log.jsonl").exists() else 0
        resume = ["--resume"] if (killed / "train_config.json").exists() else []
        process = start(command(killed, *resume), log=tmp_path / "killed.log")
        reached = lambda s=step, o=offset: logged_step(killed / "log.jsonl", o) >= s  # noqa: E731
        assert kill_at(process, Moment(f"around step {step}", reached, rng.uniform(0.0, 0.2)))
        checkpoint = latest_checkpoint(killed)
        landed.append((step, checkpoint.name if checkpoint else None))
    run(command(killed, "--resume"))

    print(*landed, sep="\n")
    assert len({checkpoint for _, checkpoint in landed}) >= 2, landed
    final = f"step-{total:08d}"
    assert_same_weights(weights(straight / "checkpoints" / final), weights(killed / "checkpoints" / final))


# ---------------------------------------------------------------------------------------------- export


@pytest.mark.slow
def test_a_killed_export_leaves_the_previous_bundle_or_none(
    tiny_model_dir: Path, tiny_bundle_dir: Path, tmp_path: Path
) -> None:
    """export-onnx --force over a bundle, SIGKILLed twice at each of: start-up, while it builds and verifies the new
    bundle, and between its last file and the rename: the folder is the previous bundle byte for byte, absent, or
    a complete new bundle, never a half one; a last run completes."""
    from sst2dist.runtime import load_classifier

    bundle = tmp_path / "exports" / "bundle"
    shutil.copytree(tiny_bundle_dir, bundle)
    command = [BIN / "sst2dist", "export-onnx", tiny_model_dir, "--output", bundle, "--data", SAMPLE_TRAIN.parent]
    command += ["--force", "--max-verify-samples", 16, "--max-accuracy-drop", 100]
    rng, parent = random.Random(SEED), bundle.parent
    moments = [
        lambda: Moment("building the variants", appears_new(parent, ".bundle.*"), rng.uniform(0.0, 3.0)),
        lambda: Moment("writing the manifest, then renaming", appears_new(parent, ".bundle.*/manifest.json"), 0.0),
        lambda: Moment("start-up or loading the model", after(rng.uniform(0.5, 3.0)), 0.0),
        lambda: Moment("verifying", appears_new(parent, ".bundle.*/model_quantized.onnx"), rng.uniform(0, 1)),
    ]
    for make in moments * 2:
        previous = snapshot(bundle) if bundle.exists() else None
        assert kill_at(start(command, log=tmp_path / "export.log"), make())
        if bundle.exists() and snapshot(bundle) != previous:  # only a complete new bundle may have replaced it
            load_classifier(bundle)
            assert json.loads((bundle / "manifest.json").read_text())["verification"]
        for stale in bundle.parent.glob(".bundle.*"):
            load_classifier_refuses(stale)
    run(command)
    load_classifier(bundle)


def load_classifier_refuses(folder: Path) -> None:
    """A staging folder a kill left behind is hidden, and when it lacks its manifest it does not load."""
    from sst2dist.runtime import load_classifier

    if (folder / "manifest.json").exists():
        return  # complete but never renamed into place (killed between the manifest and the rename)
    with pytest.raises(ValueError):
        load_classifier(folder)


# ---------------------------------------------------------------------------------------------- predict


def test_a_killed_predict_never_leaves_an_output_that_looks_complete(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    """predict --output over an earlier file, SIGKILLed while it writes and at random times within a run's length:
    the output is the earlier file byte for byte (or, when the kill came after the rename, the complete one);
    a last run writes the same lines as a run never killed."""
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"a gripping, funny film, take {i}\n" for i in range(6000)), encoding="utf-8")
    output, reference = tmp_path / "predictions.jsonl", tmp_path / "reference.jsonl"
    command = [BIN / "sst2dist", "predict", tiny_bundle_dir, "--input", texts, "--variant", "fp32"]
    started = time.monotonic()
    run([*command, "--output", reference])
    seconds, earlier = time.monotonic() - started, b'{"label": "earlier", "score": 1.0}\n'
    rng = random.Random(SEED)
    writing = lambda: Moment("writing", appears_new(tmp_path, ".predictions.jsonl.*"), rng.uniform(0, seconds / 3))  # noqa: E731
    at_random = lambda: Moment("at a random time", after(rng.uniform(0.1, 0.9) * seconds), 0.0)  # noqa: E731
    killed = 0
    for make in [writing, at_random] * 5:
        output.write_bytes(earlier)
        killed += kill_at(start([*command, "--output", output]), make())  # a random time may come after the end
        assert output.read_bytes() in (earlier, reference.read_bytes())  # never a part of the new one
    assert killed >= 5  # at least the kills while the temporary output was being written
    run([*command, "--output", output])
    assert output.read_bytes() == reference.read_bytes()


# ---------------------------------------------------------------------------------------------- augment


@pytest.mark.slow
def test_a_killed_augment_with_teacher_scoring_reruns_to_the_same_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    """sst2dist augment --teacher, SIGKILLed while the teacher scores, while the folder is staged and at a random
    time within a run's length, rerun each time: the same rows and the same logits as a run never killed."""
    from sst2dist.distill.teacher import load_logits

    env = {**ENV, "SST2DIST_CACHE": str(tmp_path / "cache")}
    data = write_data(tmp_path / "data", rows=1500)

    def command(output: Path) -> list[object]:
        return [
            BIN / "sst2dist", "augment", "--data", data, "--output", output, "--embeddings", tiny_model_dir,
            "--teacher", tiny_model_dir, "--min-words", 3, "--variants", 2, "--force",
        ]  # fmt: skip

    reference, output = tmp_path / "reference", tmp_path / "aug"
    started = time.monotonic()
    run(command(reference), env=env)
    seconds = time.monotonic() - started
    rng, killed = random.Random(SEED), []
    scoring = lambda: Moment("scoring", appears(tmp_path, ".aug.shards"), rng.uniform(0.0, 1.0))  # noqa: E731
    staging = lambda: Moment("writing the folder", appears_new(tmp_path, ".aug.*/train.tsv"), rng.uniform(0, 0.05))  # noqa: E731
    at_random = lambda: Moment("at a random time", after(rng.uniform(0.1, 0.9) * seconds), 0.0)  # noqa: E731
    moments = [scoring, staging, at_random, scoring, at_random, staging, at_random, scoring, at_random, at_random]
    for make in moments:
        killed.append(kill_at(start(command(output), env=env, log=tmp_path / "augment.log"), make()))
        assert not output.exists() or (output / "augment.json").is_file()  # the folder appears whole or not at all
    # A random time may come after the end on a busy CPU; a kill while scoring or staging cannot.
    assert all(landed for make, landed in zip(moments, killed, strict=True) if make is not at_random)
    run(command(output), env=env)
    for name in ("train.tsv", "dev.tsv"):
        assert (output / name).read_bytes() == (reference / name).read_bytes()
    (a, meta_a), (b, meta_b) = load_logits(reference / "teacher-logits.npz"), load_logits(output / "teacher-logits.npz")
    assert (a == b).all() and meta_a["key"] == meta_b["key"]
