"""`predict`'s input parsing under hypothesis: any texts written in any format come back as they were, each with
its line number; any bytes at all (odd encodings, invalid UTF-8, empty lines, broken quoting) give texts or
BadLines naming a line, never another exception; other encodings are refused with a line number."""

from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sst2dist.predict.run import BadLine, read_texts
from sst2dist.runtime import clean_text

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Texts as the readers must return them: not blank by Python's rule (check_line_text), any code point otherwise.
texts = st.text(min_size=1, max_size=40).filter(str.strip)
LINE_BREAKS = "\x00\t\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # and the tab: what an unquoted TSV field cannot hold
one_line_texts = texts.filter(lambda t: "\n" not in t and "\r" not in t and t == t.rstrip("\r\n"))


def lines_of(data: bytes) -> list[bytes]:
    return io.BytesIO(data).readlines()


def parse(data: bytes, fmt: str, field: str | None = None) -> list[tuple[int, str | BadLine]]:
    return list(read_texts(lines_of(data), fmt, field))


def texts_only(records: list[tuple[int, str | BadLine]]) -> list[str]:
    assert not [text for _, text in records if isinstance(text, BadLine)], records
    return [text for _, text in records]


@SETTINGS
@given(st.lists(one_line_texts.filter(lambda t: not t.startswith("\ufeff")), min_size=1, max_size=8))
def test_plain_lines_round_trip_with_their_numbers(items: list[str]) -> None:
    records = parse("\n".join(items).encode("utf-8", "surrogatepass"), "text")
    assert texts_only(records) == [clean_text(t) for t in items]
    assert [number for number, _ in records] == list(range(1, len(items) + 1))


@SETTINGS
@given(st.lists(st.one_of(texts, st.just("")), min_size=1, max_size=8), st.sampled_from(["sentence", "text", "review"]))
def test_jsonl_round_trips_and_skips_blank_lines(items: list[str], field: str) -> None:
    """Empty strings stand for blank lines here; lone surrogates travel as JSON escapes and come back as U+FFFD."""
    lines = [json.dumps({field: t, "label": 1}) if t else "   " for t in items]
    records = parse(("\n".join(lines) + "\n").encode(), "jsonl", field if field == "review" else None)
    expected = [(n, clean_text(t)) for n, t in enumerate(items, start=1) if t]
    assert [(n, t) for n, t in records] == expected


@SETTINGS
@given(st.lists(texts.filter(lambda t: "\x00" not in t), min_size=1, max_size=8))
def test_csv_round_trips_quoted_fields(items: list[str]) -> None:
    """Quotes, commas, \r and \n inside a field, written by the csv module with CRLF line ends (RFC 4180; with
    "\n" ends it leaves a field's bare "\r" unquoted, which no reader can tell from a line end), come back whole;
    the number is the record's last line."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["label", "text"])
    ends = []
    for text in items:
        writer.writerow([1, text])
        ends.append(out.getvalue().count("\n"))
    records = parse(out.getvalue().encode("utf-8", "surrogatepass"), "csv")
    assert texts_only(records) == [clean_text(t) for t in items]
    assert [number for number, _ in records] == ends


@SETTINGS
@given(st.lists(texts.filter(lambda t: not set(t) & set(LINE_BREAKS)), min_size=1, max_size=8))
def test_tsv_is_read_as_glue_writes_it_unquoted(items: list[str]) -> None:
    """GLUE's TSVs quote nothing: a sentence may open with `"` and must not swallow the lines after it."""
    body = "".join(f"1\t{text}\n" for text in items)
    records = parse(("label\ttext\n" + body).encode("utf-8", "surrogatepass"), "tsv")
    assert texts_only(records) == [clean_text(t) for t in items]


def test_a_tsv_sentence_opening_with_a_quote_keeps_the_next_rows() -> None:
    records = parse(b'label\ttext\n1\t" the film " is fine\n0\tdull\n', "tsv")
    assert texts_only(records) == ['" the film " is fine', "dull"]


@SETTINGS
@given(st.binary(max_size=300), st.sampled_from(["text", "jsonl", "csv", "tsv"]))
@example(b"\r\x00", "csv")  # a lone \r in the header: the csv module's own error, once a crash
def test_any_bytes_give_texts_or_numbered_bad_lines(data: bytes, fmt: str) -> None:
    line_count = max(1, len(lines_of(data)))
    try:
        records = parse(data, fmt)
    except BadLine as err:  # only a CSV/TSV header that cannot be read stops the whole file
        assert fmt in ("csv", "tsv") and err.line == 1
        return
    for number, text in records:
        assert 1 <= number <= line_count
        if isinstance(text, BadLine):
            assert text.line == number and str(text).startswith(f"line {number}: ")
        else:
            assert isinstance(text, str) and text.strip()
            text.encode("utf-8")  # lone surrogates never reach the tokenizer


@SETTINGS
@given(
    st.lists(one_line_texts, min_size=1, max_size=5),
    st.integers(0, 4),
    st.binary(min_size=1, max_size=3).filter(lambda junk: b"\n" not in junk),
)
def test_invalid_utf8_names_its_line(items: list[str], where: int, junk: bytes) -> None:
    lines = [t.encode("utf-8", "surrogatepass") for t in items]
    where = min(where, len(lines) - 1)
    lines[where] = b"\xff" + junk + lines[where]  # 0xff never appears in UTF-8
    records = parse(b"\n".join(lines) + b"\n", "text")
    bad = [(n, t) for n, t in records if isinstance(t, BadLine)]
    assert [n for n, _ in bad] == [where + 1]
    assert f"line {where + 1}: not valid UTF-8" in str(bad[0][1]) and "re-save the file as UTF-8" in str(bad[0][1])


@pytest.mark.parametrize(
    ("encoding", "fmt"),
    [("utf-16", "text"), ("utf-16", "jsonl"), ("latin-1", "text"), ("cp1252", "csv"), ("utf-32", "tsv")],
)
def test_other_encodings_are_refused_with_a_line_number(encoding: str, fmt: str) -> None:
    content = {
        "text": "café crème\nnaïve façade\n",
        "jsonl": '{"text": "café"}\n',
        "csv": "text\ncafé,1\n",
        "tsv": "text\ncafé\n",
    }[fmt]
    try:
        records = parse(content.encode(encoding), fmt)
    except BadLine as err:
        assert err.line == 1 and "not valid UTF-8" in str(err)
        return
    bad = [t for _, t in records if isinstance(t, BadLine)]
    assert bad and all("not valid UTF-8" in str(b) or "not valid JSON" in str(b) for b in bad), records


def test_a_utf8_byte_order_mark_is_not_text() -> None:
    assert texts_only(parse("\ufefffirst\nsecond\n".encode(), "text")) == ["first", "second"]
    assert texts_only(parse('\ufeff{"text": "a"}\n'.encode(), "jsonl")) == ["a"]
    assert texts_only(parse("\ufefftext\nb\n".encode(), "csv")) == ["b"]


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"text": "a", "n": ' + "9" * 5000 + "}", "not valid JSON"),
        ('{"text": "a"} trailing', "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
    ],
    ids=["deep nesting", "huge integer", "trailing data", "array"],
)
def test_hostile_jsonl_lines_are_bad_lines(line: str, words: str) -> None:
    records = parse(f'{{"text": "ok"}}\n{line}\n'.encode(), "jsonl")
    assert records[0] == (1, "ok")
    number, bad = records[1]
    assert number == 2 and isinstance(bad, BadLine) and words in str(bad) and str(bad).startswith("line 2: ")
