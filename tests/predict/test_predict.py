"""`sst2dist predict`: every input format, every bad-line case, atomic output, against a real tiny bundle."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from sst2dist import variant_choice
from sst2dist.bench.settings import BenchError, check_counts
from sst2dist.cli import main
from sst2dist.environment import usable_cpus
from sst2dist.predict.run import BadLine, predict_records, read_texts
from sst2dist.runtime import VARIANT_FILES, load_classifier, recorded_sha256
from sst2dist.variant_choice import THROUGHPUT

TEXTS = ["a gripping, funny film", "a dull, lifeless mess", 'said "great", then left']


@pytest.fixture(scope="module")
def bundle(tiny_bundle_dir: Path) -> Path:
    return tiny_bundle_dir


@pytest.fixture(scope="module")
def offline(bundle: Path) -> list[dict]:
    return load_classifier(bundle, workload=THROUGHPUT).predict(TEXTS)  # predict's default variant


def run(*args: str, stdin: str | bytes | None = None) -> Result:
    return CliRunner().invoke(main, ["predict", *args], input=stdin)


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def assert_predictions(lines: list[dict], texts: list[str], offline: list[dict]) -> None:
    assert [line["text"] for line in lines] == texts
    for line, want in zip(lines, offline, strict=True):
        assert list(line) == ["line", "id", "text", "label", "score", "scores"]
        assert line["label"] == want["label"] and abs(line["score"] - want["score"]) < 1e-5


def test_texts_as_arguments_to_stdout(bundle: Path, offline: list[dict]) -> None:
    result = run(str(bundle), *TEXTS)
    assert result.exit_code == 0, result.output
    assert_predictions(records(result.stdout), TEXTS, offline)
    choice = load_classifier(bundle, workload=THROUGHPUT).choice
    assert f"predict: variant {choice.variant}: {variant_choice.REASONS[choice.reason]}" in result.stderr  # which, why


def test_an_explicit_variant_is_logged_as_such(bundle: Path) -> None:
    result = run(str(bundle), "--variant", "fp32", "--threads", "1", *TEXTS)
    assert result.exit_code == 0, result.output
    assert "predict: variant fp32: explicit variant (--variant)" in result.stderr
    assert len(records(result.stdout)) == len(TEXTS)


def test_stdin_one_text_per_line(bundle: Path, offline: list[dict]) -> None:
    result = run(str(bundle), stdin="\n".join(TEXTS) + "\n")
    assert result.exit_code == 0, result.output
    assert_predictions(records(result.stdout), TEXTS, offline)


def write_inputs(folder: Path) -> dict[str, Path]:
    quoted = [t.replace('"', '""') for t in TEXTS]
    files = {
        "plain.txt": "\n".join(TEXTS) + "\n",
        "rows.jsonl": "".join(json.dumps({"sentence": t, "label": 1}) + "\n" for t in TEXTS),
        "rows.csv": "label,text\n" + "".join(f'1,"{t}"\n' for t in quoted),
        "rows.tsv": "sentence\tlabel\n" + "".join(f"{t}\t1\n" for t in TEXTS),
        "custom.jsonl": "".join(json.dumps({"review": t}) + "\n" for t in TEXTS),
    }
    for name, content in files.items():
        (folder / name).write_text(content, encoding="utf-8")
    return {name: folder / name for name in files}


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("plain.txt", []),
        ("rows.jsonl", []),
        ("rows.csv", []),
        ("rows.tsv", []),
        ("custom.jsonl", ["--field", "review"]),
    ],
)
def test_each_file_format_to_an_output_file(
    bundle: Path, offline: list[dict], tmp_path: Path, name: str, extra: list[str]
) -> None:
    path = write_inputs(tmp_path)[name]
    output = tmp_path / "out.jsonl"
    result = run(str(bundle), "--input", str(path), "--output", str(output), *extra)
    assert result.exit_code == 0, result.output
    assert_predictions(records(output.read_text()), TEXTS, offline)
    assert f"wrote {len(TEXTS)} predictions" in result.stderr
    assert result.stdout == ""
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_format_flag_overrides_the_suffix(bundle: Path, offline: list[dict], tmp_path: Path) -> None:
    path = tmp_path / "rows.data"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    result = run(str(bundle), "--input", str(path), "--format", "jsonl")
    assert result.exit_code == 0, result.output
    assert_predictions(records(result.stdout), TEXTS, offline)


BAD_LINES = [
    ("text", b"fine\n   \nalso fine\n", 2, "empty or whitespace-only"),
    ("text", b"fine\ncaf\xe9\nalso fine\n", 2, "not valid UTF-8"),
    ("jsonl", b'{"text": "fine"}\n{"text": "fine"\n{"text": "also fine"}\n', 2, "not valid JSON"),
    ("jsonl", b'{"text": "fine"}\n["a list"]\n{"text": "also fine"}\n', 2, "not a JSON object"),
    ("jsonl", b'{"text": "fine"}\n{"review": "x"}\n{"text": "also fine"}\n', 2, "no 'text' or 'sentence' field"),
    ("jsonl", b'{"text": "fine"}\n{"text": 5}\n{"text": "also fine"}\n', 2, "int, not a string"),
    ("jsonl", b'{"text": "fine"}\n{"text": ""}\n{"text": "also fine"}\n', 2, "empty"),
    ("csv", b"label,text\n1,fine\n1\n0,also fine\n", 3, "no value in column 'text'"),
    ("csv", b"text,label\nfine,1\n\xff\xfe,1\nalso fine,1\n", 3, "not valid UTF-8"),
    ("tsv", b"sentence\tlabel\nfine\t1\n \t0\nalso fine\t1\n", 3, "empty"),
]


@pytest.mark.parametrize(("fmt", "content", "line", "reason"), BAD_LINES)
def test_bad_line_stops_with_its_number_and_writes_nothing(
    bundle: Path, tmp_path: Path, fmt: str, content: bytes, line: int, reason: str
) -> None:
    path = tmp_path / f"input.{fmt}"
    path.write_bytes(content)
    output = tmp_path / "out.jsonl"
    output.write_text("previous results\n")
    result = run(str(bundle), "--input", str(path), "--format", fmt, "--output", str(output))
    assert result.exit_code != 0
    assert f"line {line}:" in result.stderr and reason in result.stderr, result.stderr
    assert "nothing was written" in result.stderr
    assert output.read_text() == "previous results\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize(("fmt", "content", "line", "reason"), BAD_LINES)
def test_skip_bad_skips_and_counts(
    bundle: Path, tmp_path: Path, fmt: str, content: bytes, line: int, reason: str
) -> None:
    path = tmp_path / f"input.{fmt}"
    path.write_bytes(content)
    result = run(str(bundle), "--input", str(path), "--format", fmt, "--skip-bad")
    assert result.exit_code == 0, result.output
    assert f"skipped 1 bad line(s): line {line}:" in result.stderr
    texts = [r["text"] for r in records(result.stdout)]
    assert texts[0] == "fine" and texts[-1] == "also fine"


def test_csv_without_the_column_names_the_header(bundle: Path, tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("review,label\ngood,1\n")
    result = run(str(bundle), "--input", str(path))
    assert result.exit_code != 0
    assert "line 1:" in result.stderr and "--column" in result.stderr


def test_empty_argument_is_named(bundle: Path) -> None:
    result = run(str(bundle), "fine", "  ")
    assert result.exit_code != 0
    assert "argument 2:" in result.stderr and "empty" in result.stderr


def test_missing_bundle_or_input_is_a_clear_error(bundle: Path, tmp_path: Path) -> None:
    missing_bundle = run(str(tmp_path / "nope"), "fine")
    assert missing_bundle.exit_code != 0 and "does not exist" in missing_bundle.stderr
    missing_input = run(str(bundle), "--input", str(tmp_path / "nope.txt"))
    assert missing_input.exit_code != 0 and "nope.txt does not exist" in missing_input.stderr


def test_more_threads_than_usable_cpus_are_refused_as_the_bench_refuses_them(bundle: Path, tmp_path: Path) -> None:
    too_many = usable_cpus() + 1
    output = tmp_path / "out.jsonl"
    result = run(str(bundle), "--threads", str(too_many), "--output", str(output), *TEXTS)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
    assert f"--threads {too_many} is more than the {usable_cpus()} CPU(s) this process may use" in result.stderr
    assert not output.exists()
    with pytest.raises(BenchError) as bench:
        check_counts([too_many], [1], None, None, 0)
    assert str(bench.value) in result.stderr  # the same sentence as the bench's


def test_many_lines_are_batched_and_show_progress(bundle: Path, tmp_path: Path) -> None:
    texts = [f"sentence number {i}" for i in range(600)]
    path = tmp_path / "many.txt"
    path.write_text("\n".join(texts) + "\n")
    result = run(str(bundle), "--input", str(path), "--batch-size", "7")
    assert result.exit_code == 0, result.output
    lines = records(result.stdout)
    assert [r["text"] for r in lines] == texts
    want = load_classifier(bundle).predict(texts[-3:])
    assert [r["label"] for r in lines[-3:]] == [w["label"] for w in want]
    assert "600" in result.stderr  # the tqdm bar's total


def test_readers_and_surrogates() -> None:
    rows = list(read_texts([b"ok\n", b"\n"], "text"))
    assert rows[0] == (1, "ok") and isinstance(rows[1][1], BadLine) and rows[1][1].line == 2
    assert list(read_texts([b'{"text": "a\\ud800b"}\n'], "jsonl")) == [(1, "a\ufffdb")]


class CountingOutput(io.StringIO):
    """Notes how many records had been read when the first line was written."""

    def __init__(self, read: list[int]):
        super().__init__()
        self.read, self.read_at_first_write = read, None

    def write(self, text: str) -> int:
        if self.read_at_first_write is None:
            self.read_at_first_write = self.read[0]
        return super().write(text)


def test_records_are_classified_a_window_at_a_time_in_input_order(bundle: Path) -> None:
    texts = [("a rather long and winding sentence about the film " * (i % 4)) + f"number {i}" for i in range(11)]
    read = [0]

    def source() -> Iterator[tuple[int, str]]:
        for number, text in enumerate(texts, start=1):
            read[0] += 1
            yield number, text

    classifier = load_classifier(bundle)
    out = CountingOutput(read)
    summary = predict_records(classifier, source(), out, batch_size=2, window=4)
    assert summary.written == len(texts)
    assert out.read_at_first_write == 4, "the first window was not written before reading on"
    lines = records(out.getvalue())
    assert [line["text"] for line in lines] == texts
    alone = [classifier.predict([text])[0] for text in texts]
    assert [line["label"] for line in lines] == [want["label"] for want in alone]
    assert [line["score"] for line in lines] == pytest.approx([want["score"] for want in alone], abs=1e-5)


NO_SERVER = """
import sys
from click.testing import CliRunner
from sst2dist.cli import main
result = CliRunner().invoke(main, ["predict", sys.argv[1], "fine"])
assert result.exit_code == 0, result.output
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("fastapi", "uvicorn", "prometheus_client", "starlette"))
options = ("sst2dist.serve", "sst2dist.serve.limits")  # the serve command's flags: standard library only
loaded += sorted(m for m in sys.modules if m.startswith("sst2dist.serve") and m not in options)
print("loaded:", loaded)
"""


def test_predict_does_not_import_the_server(bundle: Path) -> None:
    result = subprocess.run([sys.executable, "-c", NO_SERVER, str(bundle)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "loaded: []" in result.stdout, result.stdout


def test_a_flipped_byte_in_the_bundle_is_refused(bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(bundle, tmp_path / "bundle"))
    manifest = json.loads((copy / "manifest.json").read_text())
    for name in (VARIANT_FILES["optimized"], "tokenizer.json"):
        data = bytearray((copy / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (copy / name).write_bytes(bytes(data))
        result = run(str(copy), "--variant", "optimized", "--output", str(tmp_path / "out.jsonl"), *TEXTS)
        assert result.exit_code != 0 and not (tmp_path / "out.jsonl").exists()
        assert f"{copy / name} is corrupt" in result.output and recorded_sha256(manifest, name) in result.output
        shutil.copy2(bundle / name, copy / name)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("in.jsonl", '{"id": 10, "text": "fine"}\n{"id": 11, "text": " "}\n{"id": 12, "text": "also fine"}\n'),
        ("in.csv", "id,text\n10,fine\n11,\n12,also fine\n"),
        ("in.txt", "fine\n \nalso fine\n"),
    ],
)
def test_skipped_lines_leave_rows_that_still_name_their_line_and_id(
    bundle: Path, tmp_path: Path, name: str, content: str
) -> None:
    source = tmp_path / name
    source.write_text(content, encoding="utf-8")
    result = run(str(bundle), "--input", str(source), "--skip-bad")
    assert result.exit_code == 0, result.output
    rows = records(result.stdout)
    first_data_line = 2 if name.endswith(".csv") else 1  # the CSV header is line 1
    assert [row["line"] for row in rows] == [first_data_line, first_data_line + 2]
    assert [row["id"] for row in rows] == ([None, None] if name.endswith(".txt") else ["10", "12"])
    assert [row["text"] for row in rows] == ["fine", "also fine"]
    for row in rows:
        assert row["scores"][row["label"]] == row["score"] and abs(sum(row["scores"].values()) - 1) < 1e-6
