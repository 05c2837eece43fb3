"""Your own data end to end: a 3-class CSV with string labels and a `text` column goes through the real train
script (distilling from a 3-class teacher's logits), `export-onnx` (gate: accuracy and macro-F1), `serve` on
loopback (both HTTP dialects return every label by name; top_k), `predict` and `predict-ray` (names, same rows)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import SHORT_RUN, make_tiny_model, run_train
from servers import Server

from sst2dist.cli import main

LABELS = ("bad", "good", "meh")  # the data's string labels, sorted: the order the trained model takes
WORDS = {"bad": "a dull, lifeless mess", "good": "a gripping, funny film", "meh": "plain, average, so so"}


def write_split(path: Path, count: int, offset: int) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows((f"{WORDS[label]} number {offset + i}", label) for i in range(count) for label in LABELS)


def train_distil_export(root: Path) -> Path:
    """The trained, distilled student's bundle, exported by the CLI from the CSV folder."""
    data = root / "reviews"
    data.mkdir()
    write_split(data / "train.csv", 8, 0)
    write_split(data / "dev.csv", 4, 100)
    student, teacher = make_tiny_model(root / "base", labels=LABELS), make_tiny_model(root / "t", 1, labels=LABELS)
    options = ["--data", data, "--model", student, "--teacher", teacher, "--teacher-cache", root / "cache"]
    result = run_train(*options, "--output-dir", root / "run", *SHORT_RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((root / "run" / "metrics.json").read_text())["teacher"]
    args = ["export-onnx", str(root / "run" / "model"), "--output", str(root / "bundle"), "--data", str(data)]
    exported = CliRunner().invoke(main, [*args, "--openvino", "off", "--max-accuracy-drop", "100"])
    assert exported.exit_code == 0, exported.output
    assert "accuracy" in exported.output and "macro-F1" in exported.output
    return root / "bundle"


def assert_every_label(answer: list[dict], count: int = 3) -> None:
    assert [set(entry) for entry in answer] == [{"label", "score"}] * count
    assert {entry["label"] for entry in answer} <= set(LABELS) and len({e["label"] for e in answer}) == count
    scores = [entry["score"] for entry in answer]
    assert scores == sorted(scores, reverse=True)


def check_serve(bundle: Path) -> None:
    server = Server(bundle, "--workers", "1")
    try:
        server.wait()
        tei = server.client.post("/predict", json={"inputs": ["a gripping, funny film", "a dull, lifeless mess"]})
        assert tei.status_code == 200, tei.text
        assert len(tei.json()) == 2 and all(assert_every_label(answer) is None for answer in tei.json())
        hf = server.client.post("/", json={"inputs": "plain, average, so so"})  # one text: still a list of lists
        assert hf.status_code == 200 and len(hf.json()) == 1, hf.text
        assert_every_label(hf.json()[0])
        (top,) = server.client.post("/", json={"inputs": "so so", "parameters": {"top_k": 2}}).json()
        assert_every_label(top, count=2)
        assert_every_label(server.client.post("/predict", json={"inputs": "so so", "top_k": 1}).json(), count=1)
    finally:
        server.stop()


def check_predict(bundle: Path, root: Path) -> None:
    source = root / "new.jsonl"
    source.write_text("".join(json.dumps({"text": f"{w} again"}) + "\n" for w in WORDS.values()), encoding="utf-8")
    outputs = {command: root / f"{command}.jsonl" for command in ("predict", "predict-ray")}
    for command, extra in (("predict", ["--threads", "1"]), ("predict-ray", ["--actors", "1"])):
        args = [command, str(bundle), "--input", str(source), "--output", str(outputs[command]), "--variant", "fp32"]
        result = CliRunner().invoke(main, [*args, *extra])
        assert result.exit_code == 0, result.output
    rows = {name: [json.loads(line) for line in path.read_text().splitlines()] for name, path in outputs.items()}
    assert rows["predict"] == rows["predict-ray"]
    assert [row["line"] for row in rows["predict"]] == [1, 2, 3]
    assert all(row["label"] in LABELS and list(row["scores"]) == list(LABELS) for row in rows["predict"])


@pytest.mark.slow
def test_a_three_class_csv_with_string_labels_trains_distils_exports_serves_and_predicts(tmp_path: Path) -> None:
    bundle = train_distil_export(tmp_path)
    config = json.loads((bundle / "config.json").read_text())
    assert config["id2label"] == {"0": "bad", "1": "good", "2": "meh"}
    check_serve(bundle)
    check_predict(bundle, tmp_path)
