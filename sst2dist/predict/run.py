"""`sst2dist predict`: classify texts from arguments, a file or stdin, writing JSONL.

Readers yield a `Record` (line number, text, and the record's id where the input has one: a JSONL field or CSV
column "id" or "idx"); a line that cannot give a text raises `BadLine` naming its number (or is skipped and counted
with `skip_bad=True`). Each output row carries the line number and id, so rows still line up with the input after
skipped lines; `predict-ray` writes the same columns (OUTPUT_COLUMNS). Output to a file goes to a temporary file
beside it, renamed over the target only when every line succeeded. Lines are classified a window at a time: the
classifier sorts each window by length, so batches pad little, while memory stays flat and the output keeps the
input's order. Imports no torch, transformers or optimum.

    sst2dist predict export/minilm "a gripping, funny film" "a dull mess"
    sst2dist predict export/minilm --input reviews.csv --column review --output predictions.jsonl
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple, TextIO

import numpy as np

from sst2dist.atomic import atomic_open
from sst2dist.predict.options import FORMATS, PredictOptions
from sst2dist.runtime import Classifier, clean_text

SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}
TEXT_FIELDS = ("text", "sentence")  # looked up in this order when --field/--column is not given
ID_FIELDS = ("id", "idx")  # a record's id, copied to its output row when the input has one
OUTPUT_COLUMNS = ("line", "id", "text", "label", "score", "scores")  # predict's rows; predict-ray's columns
WINDOW = 1024  # texts read, classified and written per step


class Record(NamedTuple):
    """One input record: its line (or row, or argument) number, its text or why it has none, and its id."""

    line: int
    text: str | BadLine
    id: str | None = None


class BadLine(ValueError):
    """One input line that gives no text to classify."""

    def __init__(self, line: int, reason: str, where: str = "line"):
        super().__init__(f"{where} {line}: {reason}")
        self.line, self.reason = line, reason


def check_line_text(line: int, text: object, where: str = "line") -> str:
    if not isinstance(text, str):
        raise BadLine(line, f"the text is {type(text).__name__}, not a string", where)
    if not text.strip():
        raise BadLine(line, "the text is empty or whitespace-only", where)
    return clean_text(text)


def guess_format(path: str | None, given: str | None) -> str:
    if given:
        return given
    return SUFFIX_FORMATS.get(Path(path).suffix.lower(), "text") if path else "text"


def decoded_lines(binary: Iterable[bytes], keep_ends: bool = False) -> Iterator[tuple[int, str]]:
    """(line number, line without its newline unless `keep_ends`), strictly UTF-8: a bad byte is a BadLine, not a
    crash."""
    for number, raw in enumerate(binary, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            yield number, BadLine(number, f"not valid UTF-8 (byte {err.start}): re-save the file as UTF-8")
            continue
        if number == 1:
            line = line.removeprefix("\ufeff")
        yield number, line if keep_ends else line.rstrip("\r\n")


def id_text(value: object) -> str | None:
    """A record's id as output carries it: text, whatever type the input gave it in."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def read_plain(binary: Iterable[bytes]) -> Iterator[Record]:
    """One text per line."""
    for number, line in decoded_lines(binary):
        yield Record(number, line if isinstance(line, BadLine) else _try(check_line_text, number, line))


def read_jsonl(binary: Iterable[bytes], field_name: str | None) -> Iterator[Record]:
    """One JSON object per line; the text is `field_name`, else the first of "text", "sentence". Blank lines pass."""
    for number, line in decoded_lines(binary):
        if isinstance(line, BadLine) or not line.strip():
            if isinstance(line, BadLine):
                yield Record(number, line)
            continue
        try:
            record = _jsonl_object(number, line)
        except BadLine as err:
            yield Record(number, err)
            continue
        record_id = id_text(next((record[name] for name in ID_FIELDS if name in record), None))
        yield Record(number, _try(_jsonl_text, number, record, field_name), record_id)


def _jsonl_object(number: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise BadLine(number, f"not valid JSON ({err.msg} at column {err.colno})") from None
    except RecursionError:
        raise BadLine(number, "not valid JSON here (nested too deeply)") from None
    except ValueError:  # an integer over Python's 4300-digit limit
        raise BadLine(number, "not valid JSON here (a number too long to read)") from None
    if not isinstance(record, dict):
        raise BadLine(number, "not a JSON object")
    return record


def _jsonl_text(number: int, record: dict, field_name: str | None) -> str:
    names = (field_name,) if field_name else TEXT_FIELDS
    name = next((n for n in names if n in record), None)
    if name is None:
        raise BadLine(number, f"has no {' or '.join(repr(n) for n in names)} field (use --field to choose one)")
    return check_line_text(number, record[name])


def read_table(binary: Iterable[bytes], delimiter: str, column: str | None) -> Iterator[Record]:
    """CSV/TSV with a header row; the text is `column`, else the first of "text", "sentence"."""
    # Line ends stay: the csv module reads \r\n itself, and a quoted field may hold \r or \n of its own.
    lines = decoded_lines(binary, keep_ends=True)
    # TSV as GLUE writes it: no quoting, so a sentence that opens with `"` is text, not the start of a quoted field.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    rows = csv.reader(_TrackedLines(lines), delimiter=delimiter, quoting=quoting)
    kind = "TSV" if delimiter == "\t" else "CSV"
    try:
        header = next(rows)
    except StopIteration:
        return
    except BadLine as err:
        raise err from None
    except csv.Error as err:  # e.g. a lone \r inside the header line
        raise BadLine(1, f"unreadable {kind} header ({err})") from None
    names = (column,) if column else TEXT_FIELDS
    index = next((header.index(n) for n in names if n in header), None)
    if index is None:
        wanted = " or ".join(repr(n) for n in names)
        raise BadLine(1, f"the header {header} has no {wanted} column (use --column to choose one)")
    id_index = next((header.index(n) for n in ID_FIELDS if n in header), None)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except BadLine as err:
            yield Record(err.line, err)
            continue
        except csv.Error as err:
            yield Record(rows.line_num, BadLine(rows.line_num, f"unreadable {kind} ({err})"))
            continue
        number = rows.line_num
        if not row:
            continue
        record_id = row[id_index] if id_index is not None and id_index < len(row) else None
        if index >= len(row):
            yield Record(number, BadLine(number, f"has {len(row)} fields, no value in column {header[index]!r}"))
            continue
        yield Record(number, _try(check_line_text, number, row[index]), record_id)


class _TrackedLines:
    """Feeds decoded lines to csv.reader, raising a BadLine for an undecodable one."""

    def __init__(self, lines: Iterator[tuple[int, str | BadLine]]):
        self.lines = lines

    def __iter__(self):
        return self

    def __next__(self) -> str:
        number, line = next(self.lines)
        if isinstance(line, BadLine):
            raise line
        return line


def _try(function, number: int, *args) -> str | BadLine:
    try:
        return function(number, *args)
    except BadLine as err:
        return err


def read_texts(binary: Iterable[bytes], fmt: str, field_name: str | None = None) -> Iterator[tuple[int, str | BadLine]]:
    """(line number, text or the BadLine it gave) for every input record."""
    return ((record.line, record.text) for record in read_records(binary, fmt, field_name))


def read_records(binary: Iterable[bytes], fmt: str, field_name: str | None = None) -> Iterator[Record]:
    """A Record for every input record, in input order."""
    if fmt == "text":
        return read_plain(binary)
    if fmt == "jsonl":
        return read_jsonl(binary, field_name)
    if fmt in ("csv", "tsv"):
        return read_table(binary, "," if fmt == "csv" else "\t", field_name)
    raise ValueError(f"unknown input format {fmt!r}: choose one of {', '.join(FORMATS)}")


@dataclass
class PredictSummary:
    written: int = 0
    skipped: list[BadLine] = field(default_factory=list)


def output_row(record: Record, probabilities: np.ndarray, labels: list[str]) -> dict:
    """One output row, OUTPUT_COLUMNS in order: where it came from, the best label and every label's score."""
    best = int(probabilities.argmax())
    scores = {label: float(p) for label, p in zip(labels, probabilities, strict=True)}
    values = (record.line, record.id, record.text, labels[best], scores[labels[best]], scores)
    return dict(zip(OUTPUT_COLUMNS, values, strict=True))


def predict_records(
    classifier: Classifier,
    records: Iterable[Record | tuple[int, str | BadLine]],
    out: TextIO,
    *,
    batch_size: int = PredictOptions.batch_size,
    skip_bad: bool = False,
    progress=None,
    window: int = WINDOW,
) -> PredictSummary:
    """Classify `records` `window` texts at a time, writing one JSON line (`output_row`) per text in their order; a
    BadLine stops it unless `skip_bad`."""
    summary = PredictSummary()
    chunk: list[Record] = []

    def flush() -> None:
        probabilities = classifier.predict_proba([record.text for record in chunk], batch_size=batch_size)
        for record, row in zip(chunk, probabilities, strict=True):
            out.write(json.dumps(output_row(record, row, classifier.labels)) + "\n")
        summary.written += len(chunk)
        if progress is not None:
            progress.update(len(chunk))
        chunk.clear()

    for record in map(lambda item: Record(*item), records):
        if isinstance(record.text, BadLine):
            if not skip_bad:
                raise record.text
            summary.skipped.append(record.text)
            if progress is not None:
                progress.update(1)
            continue
        chunk.append(record)
        if len(chunk) >= window:
            flush()
    if chunk:
        flush()
    return summary


def count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def run_predict(
    classifier: Classifier,
    options: PredictOptions | None = None,
    *,
    texts: Iterable[str] = (),
    stdin: io.BufferedReader | None = None,
    **fields,
) -> PredictSummary:
    """The `predict` command: texts from arguments, `options.input_path` or stdin; JSONL to `options.output` or
    stdout. `options` may be given as PredictOptions fields instead (input_path=..., batch_size=...)."""
    from tqdm import tqdm

    options = replace(options, **fields) if options else PredictOptions(**fields)
    texts, input_path, fmt = list(texts), options.input_path, options.fmt
    if texts and input_path:
        raise ValueError("give texts as arguments or --input FILE, not both")
    print(f"predict: {classifier.choice.line()}", file=sys.stderr)
    progress = None
    if texts:
        records: Iterable = (Record(i, _try(check_line_text, i, t, "argument")) for i, t in enumerate(texts, start=1))
        source = None
    elif input_path:
        path = Path(input_path)
        if not path.is_file():
            raise ValueError(f"input file {path} does not exist")
        fmt = guess_format(input_path, fmt)
        source = path.open("rb")
        records = read_records(source, fmt, options.field_name)
        total = count_lines(path) - (fmt in ("csv", "tsv"))  # the header row
        progress = tqdm(total=total, unit="line", file=sys.stderr, desc="predict", leave=False)
    else:
        source = stdin or sys.stdin.buffer
        records = read_records(source, fmt or "text", options.field_name)
    settings = {"batch_size": options.batch_size, "skip_bad": options.skip_bad, "progress": progress}
    try:
        if options.output:
            if not Path(options.output).parent.is_dir():
                raise ValueError(f"output folder {Path(options.output).parent} does not exist: create it first")
            with atomic_open(options.output, "the predictions") as out:
                return predict_records(classifier, records, out, **settings)
        return predict_records(classifier, records, sys.stdout, **settings)
    finally:
        if progress is not None:
            progress.close()
        if input_path and source is not None:
            source.close()
