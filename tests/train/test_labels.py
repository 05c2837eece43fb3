"""Your own data: N classes, text labels, other column names, a model or teacher of other labels refused, and the
trackers (MLflow for real, with a local file store)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHORT_RUN, make_tiny_model, run_train

from sst2dist.train.loop import main

WORDS = {"bad": "dull awful boring", "good": "witty gorgeous fine", "meh": "plain average so so"}


def write_three_class(folder: Path, dev_extra: str = "", header: str = "sentence\tlabel") -> Path:
    """24 training and 6 validation rows labelled bad / good / meh."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [(f"{words} film number {i}", label) for i in range(8) for label, words in WORDS.items()]
    (folder / "train.tsv").write_text(header + "\n" + "".join(f"{s}\t{y}\n" for s, y in rows), encoding="utf-8")
    dev = "".join(f"{words} movie\t{label}\n" for label, words in WORDS.items()) * 2 + dev_extra
    (folder / "dev.tsv").write_text(header + "\n" + dev, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def three_class_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny3") / "model", labels=("bad", "good", "meh"))


def reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def refusal(argv: list[object], capsys: pytest.CaptureFixture[str]) -> str:
    """Run `python -m sst2dist.train ARGV` in this process; it must fail with one sentence on one line (after any
    progress bars)."""
    try:
        assert main([str(arg) for arg in argv]) == 1
    finally:
        reset_accelerate()
    error = capsys.readouterr().err.strip().split("\n")[-1]
    assert error.startswith("sst2dist.train: error: ") and "Traceback" not in error, error
    return error


@pytest.mark.slow
def test_a_three_class_file_with_text_labels_trains_logs_to_mlflow_and_distils(
    tmp_path: Path, three_class_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, store = write_three_class(tmp_path / "data"), tmp_path / "mlruns"
    teacher = tmp_path / "teacher"
    options = ["--data", data, "--model", three_class_model, *SHORT_RUN, "--eval-every", 2]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())  # respected: not the default OUTPUT_DIR/mlruns
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    result = run_train(*options, "--output-dir", teacher, "--report-to", "mlflow")
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((teacher / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "bad", "1": "good", "2": "meh"}

    (run_dir,) = [p for p in store.glob("*/*") if (p / "meta.yaml").is_file() and p.parent.name != "models"]
    params = {p.name: p.read_text() for p in (run_dir / "params").iterdir()}
    assert params["data"] == str(data) and params["report_to"] == "mlflow" and params["seed"] == "42"
    accuracy = (run_dir / "metrics" / "eval_accuracy").read_text().splitlines()
    evaluations = [r for r in map(json.loads, (teacher / "log.jsonl").read_text().splitlines()) if "eval_accuracy" in r]
    assert len(evaluations) >= 2  # every evaluation, logged once each, with its step and value
    assert [(int(line.split()[2]), float(line.split()[1])) for line in accuracy] == [
        (r["step"], r["eval_accuracy"]) for r in evaluations
    ]

    student = tmp_path / "student"
    cache = tmp_path / "cache"
    options += ["--teacher", teacher / "model", "--teacher-cache", cache, "--output-dir", student]
    result = run_train(*options)
    assert result.returncode == 0, result.stderr[-3000:]
    (logits_file,) = cache.glob("*.npz")
    from sst2dist.distill.logits import load_logits

    logits, meta = load_logits(logits_file)
    assert logits.shape == (24, 3) and meta["labels"] == ["bad", "good", "meh"]
    assert json.loads((student / "metrics.json").read_text())["teacher"]


@pytest.mark.slow
def test_pos_neg_labels_give_the_same_model_as_zero_one(tmp_path: Path, tiny_model_dir: Path) -> None:
    from safetensors.numpy import load_file

    source = (Path(__file__).parents[1] / "data" / "sst2").resolve()
    weights = {}
    for name, spelling in (("digits", {"0": "0", "1": "1"}), ("words", {"0": "neg", "1": "pos"})):
        folder = tmp_path / name
        folder.mkdir()
        for split in ("train.tsv", "dev.tsv"):
            header, *lines = (source / split).read_text(encoding="utf-8").splitlines()
            rows = [line.rsplit("\t", 1) for line in lines]
            text = "\n".join([header, *(f"{s}\t{spelling[y]}" for s, y in rows)]) + "\n"
            (folder / split).write_text(text, encoding="utf-8")
        base = tmp_path / f"base-{name}"  # a base encoder: a 2-label head of SST-2's names would refuse neg/pos
        make_tiny_model(base, labels=("LABEL_0", "LABEL_1"))
        out = tmp_path / f"run-{name}"
        result = run_train("--data", folder, "--model", base, "--output-dir", out, *SHORT_RUN)
        assert result.returncode == 0, result.stderr[-3000:]
        weights[name] = load_file(out / "model" / "model.safetensors")
    assert weights["digits"].keys() == weights["words"].keys()
    for key, value in weights["digits"].items():
        assert (value == weights["words"][key]).all(), key


def test_unknown_dev_label_is_refused_with_its_line(
    tmp_path: Path, three_class_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_three_class(tmp_path / "data", dev_extra="a fine film\tsuperb\n")
    error = refusal(["--data", data, "--model", three_class_model, "--output-dir", tmp_path / "run"], capsys)
    assert error.endswith(
        f"{data / 'dev.tsv'} line 8: label 'superb' is not one of the training labels (bad, good, meh): fix the "
        "row, or add the label to the training data (or to --labels)"
    )


def test_a_missing_column_is_refused_and_columns_can_be_named(
    tmp_path: Path, three_class_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_three_class(tmp_path / "data", header="review\tstars")
    options = ["--data", data, "--model", three_class_model, "--max-steps", 1, "--eval-every", 0]
    error = refusal([*options, "--output-dir", tmp_path / "run"], capsys)
    assert "train.tsv has no sentence, label column (columns: ['review', 'stars']): rename the columns" in error
    from sst2dist.data import load_sst2

    named = load_sst2(str(data), columns=__import__("sst2dist.data").data.Columns("review", "stars"))
    assert named["train"].features["label"].names == ["bad", "good", "meh"]


def test_a_model_or_teacher_of_other_labels_is_refused_before_training(
    tmp_path: Path, tiny_model_dir: Path, three_class_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_three_class(tmp_path / "data")
    error = refusal(["--data", data, "--model", tiny_model_dir, "--output-dir", tmp_path / "a"], capsys)
    assert error.endswith(
        f"--model {tiny_model_dir} was trained on the labels (negative, positive) but the data's labels are "
        "(bad, good, meh): pass a model trained on these labels in this order, or a base encoder"
    )
    options = ["--data", data, "--model", three_class_model, "--teacher", tiny_model_dir]
    error = refusal([*options, "--output-dir", tmp_path / "b", "--teacher-cache", tmp_path / "cache"], capsys)
    assert f"--teacher {tiny_model_dir} was trained on the labels (negative, positive)" in error
    assert not (tmp_path / "cache").exists()  # refused before scoring
    reordered = ["--labels", "meh,good,bad", "--output-dir", tmp_path / "c"]
    error = refusal(["--data", data, "--model", three_class_model, *reordered], capsys)
    assert "the data's labels are (meh, good, bad)" in error


@pytest.mark.parametrize(
    ("report_to", "message"),
    [
        ("wandb", "--report-to wandb needs the wandb package: pip install wandb"),
        ("tensorboard,comet_ml", "--report-to comet_ml needs the comet-ml package: pip install comet-ml"),
        ("mlfow", "--report-to 'mlfow' is not a tracker: pass none, all, or a comma list of tensorboard, mlflow"),
        ("none,tensorboard", "--report-to 'none,tensorboard': none and all stand alone, not in a list of trackers"),
    ],
)
def test_a_tracker_that_is_not_installed_or_unknown_is_refused(
    tmp_path: Path, sst2_sample_dir: Path, report_to: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    error = refusal(["--data", sst2_sample_dir, "--report-to", report_to, "--output-dir", tmp_path / "run"], capsys)
    assert message in error
    assert not (tmp_path / "run").exists()


def test_the_same_command_runs_once_the_refused_data_is_fixed(
    tmp_path: Path, three_class_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run refused before its first step (a bad row, a tracker that would not start) leaves only its config: the
    user fixes the row and reruns the same command, which must not call it "a run" to --resume or --overwrite."""
    data = write_three_class(tmp_path / "data", dev_extra="a fine film\tsuperb\n")
    out = tmp_path / "run"
    options = ["--data", data, "--model", three_class_model, "--output-dir", out, "--max-steps", 1, "--eval-every", 0]
    assert "label 'superb' is not one of the training labels" in refusal(options, capsys)
    write_three_class(tmp_path / "data")
    try:
        assert main([str(option) for option in options]) == 0, capsys.readouterr().err[-2000:]
    finally:
        reset_accelerate()
    assert json.loads((out / "model" / "config.json").read_text())["id2label"] == {"0": "bad", "1": "good", "2": "meh"}


def test_overwrite_with_refused_data_keeps_the_earlier_run(
    tmp_path: Path, three_class_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--overwrite replaces a run only once the new one starts: a bad row refused first leaves the finished run."""
    data, out = write_three_class(tmp_path / "data"), tmp_path / "run"
    options = ["--data", data, "--model", three_class_model, "--output-dir", out, "--max-steps", 1, "--eval-every", 0]
    try:
        assert main([str(option) for option in options]) == 0, capsys.readouterr().err[-2000:]
    finally:
        reset_accelerate()
    finished = {name: (out / name).read_bytes() for name in ("metrics.json", "model/model.safetensors")}
    write_three_class(tmp_path / "data", dev_extra="a fine film\tsuperb\n")
    assert "label 'superb'" in refusal([*options, "--overwrite"], capsys)
    assert {name: (out / name).read_bytes() for name in finished} == finished
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints",
        "log.jsonl",
        "metrics.json",
        "model",
        "train_config.json",
    ]
    write_three_class(tmp_path / "data")
    try:
        assert main([*map(str, options), "--overwrite", "--seed", "7"]) == 0
    finally:
        reset_accelerate()
    assert json.loads((out / "train_config.json").read_text())["seed"] == 7
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
