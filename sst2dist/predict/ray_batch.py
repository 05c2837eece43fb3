"""`sst2dist predict-ray`: batch prediction with Ray Data, on a local Ray or across a cluster.

    files (any path Ray Data reads) ──► read tasks: `predict`'s own readers, rows {line, text | error}
        ──► map_batches over an actor pool: one bundle load per actor, each block length-sorted by the Classifier
        ──► back to the driver in input order ──► one Parquet or JSONL file, written atomically

The driver loads the bundle once before Ray starts anything, so a missing or broken bundle fails at once, and it
settles the variant there: every actor then runs the same one, whatever CPU it lands on. A line that gives no
text travels as an error row and stops the run with `predict`'s message when it reaches the driver, in input
order (or is counted with `skip_bad`). Needs the `ray` extra: `pip install "sst2dist[ray]"`.

    sst2dist predict-ray export/minilm --input reviews.parquet --column review --output predictions.parquet
"""

from __future__ import annotations

import fnmatch
import glob
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

try:
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray
    from ray.data.datasource import FileBasedDatasource
except ImportError as err:  # the base install has no Ray
    raise ImportError(f"`sst2dist predict-ray` needs Ray Data ({err}): pip install 'sst2dist[ray]'") from err

from sst2dist.atomic import atomic_open, atomic_path
from sst2dist.environment import usable_cpus
from sst2dist.predict.ray_options import RAY_FORMATS, RayPredictOptions
from sst2dist.predict.run import (
    ID_FIELDS,
    OUTPUT_COLUMNS,
    SUFFIX_FORMATS,
    TEXT_FIELDS,
    WINDOW,
    BadLine,
    Record,
    check_line_text,
    guess_format,
    id_text,
    read_records,
)
from sst2dist.runtime import BundleError, Classifier, load_classifier, softmax
from sst2dist.variant_choice import workload_for

OUTPUT_FORMATS = {".parquet": "parquet", ".jsonl": "jsonl"}
READ_CHUNK = 1 << 20  # bytes read from a file at a time
# What a read task emits per input line; `error` and `fatal` are dropped before the output is written.
ROW_SCHEMA = pa.schema(
    [
        ("file", pa.string()),
        ("line", pa.int64()),
        ("id", pa.string()),
        ("text", pa.string()),
        ("error", pa.string()),
        ("fatal", pa.bool_()),
    ]
)


class BadRow(ValueError):
    """An input row that gives no text, with `predict`'s message for it."""


@dataclass
class RaySummary:
    written: int = 0
    skipped: list[str] = field(default_factory=list)


# --- reading: a Ray Data datasource over predict's readers ---------------------------------------------------


def _byte_lines(handle: Any, chunk: int = READ_CHUNK) -> Iterator[bytes]:
    """The lines of a binary stream, each with its newline (pyarrow's NativeFile has no line iterator)."""
    pending = b""
    while block := handle.read(chunk):
        *lines, pending = (pending + block).split(b"\n")
        yield from (line + b"\n" for line in lines)
    if pending:
        yield pending


def _rows(path: str, records: Iterable[Record]) -> Iterator[tuple]:
    """(file, line, id, text, error, fatal) per record; a BadLine raised by the reader (a CSV header without the
    column) is a fatal error row: it cannot be skipped, as in `predict`."""
    try:
        for number, text, record_id in records:
            if isinstance(text, BadLine):
                yield path, number, record_id, None, str(text), False
            else:
                yield path, number, record_id, text, None, False
    except BadLine as err:
        yield path, err.line, None, None, str(err), True


def _parquet_records(handle: Any, field_name: str | None) -> Iterator[Record]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(handle)
    present = parquet.schema_arrow.names
    names = (field_name,) if field_name else TEXT_FIELDS
    column = next((n for n in names if n in present), None)
    if column is None:
        wanted = " or ".join(repr(n) for n in names)
        raise BadLine(1, f"the columns {present} have no {wanted} (use --column to choose one)", "row")
    id_column = next((n for n in ID_FIELDS if n in present), None)
    number = 0
    for batch in parquet.iter_batches(columns=[column] + ([id_column] if id_column else []), batch_size=WINDOW):
        ids = batch.column(1).to_pylist() if id_column else [None] * len(batch)
        for value, record_id in zip(batch.column(0).to_pylist(), ids, strict=True):
            number += 1
            try:
                yield Record(number, check_line_text(number, value, "row"), id_text(record_id))
            except BadLine as err:
                yield Record(number, err, id_text(record_id))


def _blocks(rows: Iterator[tuple], size: int = WINDOW) -> Iterator[pa.Table]:
    chunk: list[tuple] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield _table(chunk)
            chunk = []
    if chunk:
        yield _table(chunk)


def _table(rows: list[tuple]) -> pa.Table:
    columns = zip(*rows, strict=True)
    arrays = [pa.array(column, type=spec.type) for column, spec in zip(columns, ROW_SCHEMA, strict=True)]
    return pa.Table.from_arrays(arrays, schema=ROW_SCHEMA)


class PredictTextDatasource(FileBasedDatasource):
    """Reads files with `predict`'s readers (Parquet with pyarrow): one row per input line, in file order."""

    def __init__(self, paths: str | list[str], fmt: str, field_name: str | None):
        super().__init__(paths)
        self.fmt, self.field_name = fmt, field_name

    def _open_input_source(self, filesystem, path: str, **open_args):
        if self.fmt == "parquet":  # the Parquet footer needs random access
            return filesystem.open_input_file(path)
        return super()._open_input_source(filesystem, path, **open_args)

    def _read_stream(self, handle, path: str) -> Iterator[pa.Table]:
        if self.fmt == "parquet":
            records = _parquet_records(handle, self.field_name)
        else:
            records = read_records(_byte_lines(handle), self.fmt, self.field_name)
        yield from _blocks(_rows(path, records))


# --- classifying: one Classifier per actor ---------------------------------------------------------------------


class ClassifyBlock:
    """The map_batches callable: loads the bundle once per actor, then classifies one block per call. The
    Classifier sorts each block by token length, so its onnxruntime batches pad little."""

    def __init__(self, bundle: str, variant: str, threads: int, batch_size: int, logits: bool, files: dict):
        self.classifier = Classifier(bundle, variant=variant, threads=threads)
        if loaded_files(self.classifier) != files:  # re-exported since the driver chose: never mix two exports
            raise BundleError(
                f"{bundle} changed while predict-ray ran (exported again?): the actors would not run the variant "
                "the driver chose; run predict-ray again"
            )
        self.batch_size, self.with_logits = batch_size, logits

    def __call__(self, block: pa.Table) -> pa.Table:
        texts = block.column("text").to_pylist()
        good = [i for i, text in enumerate(texts) if text is not None]
        labels = self.classifier.labels
        logits = np.full((len(texts), len(labels)), np.nan, dtype=np.float32)
        logits[good] = self.classifier.logits([texts[i] for i in good], self.batch_size)
        return append_predictions(block, logits, labels, self.with_logits, good)


def loaded_files(classifier: Classifier) -> dict:
    """The sha256s manifest.json records for what `classifier` loaded: its variant's model file (and an IR's weights:
    NNCF's .xml holds none, so two exports can share it) and support files."""
    manifest = classifier.manifest
    entry = manifest["variants"][classifier.variant]
    return {
        "variant": entry.get("sha256"),
        "weights": (entry.get("weights") or {}).get("sha256"),
        **{name: entry.get("sha256") for name, entry in manifest.get("files", {}).items()},
    }


def append_predictions(
    block: pa.Table, logits: np.ndarray, labels: list[str], with_logits: bool, good: list[int]
) -> pa.Table:
    """`block` with label, score, scores (one field per label) and optionally logits; null on error rows."""
    mask = np.ones(len(block), dtype=bool)
    mask[good] = False
    probabilities = softmax(np.nan_to_num(logits))
    best = probabilities.argmax(axis=-1)
    label = pa.array([labels[i] for i in best], mask=mask)
    score = pa.array(probabilities[np.arange(len(best)), best].astype(np.float64), mask=mask)
    scores = pa.StructArray.from_arrays(
        [pa.array(probabilities[:, i].astype(np.float64)) for i in range(len(labels))],
        names=labels,
        mask=pa.array(mask),
    )
    block = block.append_column("label", label).append_column("score", score).append_column("scores", scores)
    if with_logits:
        rows = pa.array(list(logits), type=pa.list_(pa.float32()), mask=mask)
        block = block.append_column("logits", rows)
    return block


# --- the run -----------------------------------------------------------------------------------------------------


@contextmanager
def ray_session(address: str | None, num_cpus: int | None) -> Iterator[None]:
    """Ray as asked: the one already running in this process; else the cluster at `address` or $RAY_ADDRESS;
    else a local Ray with `num_cpus` CPUs, shut down afterwards (a joined cluster is only disconnected from)."""
    if ray.is_initialized():
        yield
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or os.environ["RAY_ADDRESS"], log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus or usable_cpus(), include_dashboard=False)  # Ray itself counts every core
    try:
        yield
    finally:
        ray.shutdown()


GLOB_CHARACTERS = ("*", "?", "[")


def input_paths(input_path: str) -> str | list[str]:
    """What Ray Data reads: the path itself, or the files a glob matches (local, or on a remote filesystem that
    pyarrow lists), sorted; a glob that matches nothing is a ValueError."""
    if not any(character in input_path for character in GLOB_CHARACTERS):
        return input_path
    matches = remote_glob(input_path) if "://" in input_path else local_glob(input_path)
    if not matches:
        raise ValueError(f"--input {input_path} matches no file: check the pattern")
    return matches


def local_glob(pattern: str) -> list[str]:
    return sorted(path for path in glob.glob(pattern, recursive=True) if Path(path).is_file())


def remote_glob(pattern: str) -> list[str]:
    """The files under the glob's fixed prefix on its filesystem (s3://, gs://, file://, ...) whose path matches it:
    pyarrow lists them as `bucket/key` (or `/path` for file://), the form of the pattern after its scheme."""
    from pyarrow import fs

    scheme, wanted = pattern.split("://", 1)
    prefix = re.split(r"[*?\[]", pattern, maxsplit=1)[0].rsplit("/", 1)[0]
    filesystem, root = fs.FileSystem.from_uri(prefix)
    infos = filesystem.get_file_info(fs.FileSelector(root, recursive=True))
    return sorted(f"{scheme}://{info.path}" for info in infos if info.is_file and fnmatch.fnmatch(info.path, wanted))


def input_format(paths: str | list[str], given: str | None) -> str:
    """--format, else the suffix of the path (of the first file, for a local folder or a glob); a remote folder
    or file whose name gives no format is refused rather than read as text lines."""
    if given:
        return given
    first = paths[0] if isinstance(paths, list) else paths
    path = Path(first.split("://", 1)[-1])
    if "://" not in first and path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith((".", "_")))
        path = files[0] if files else path
    suffix = path.suffix.lower()
    if "://" in first and suffix not in (".parquet", *SUFFIX_FORMATS, ".txt"):
        raise ValueError(
            f"cannot tell the format of {first} from its name: pass --format (one of {', '.join(RAY_FORMATS)}) "
            "or a glob such as 'prefix/*.parquet'"
        )
    return "parquet" if suffix == ".parquet" else guess_format(str(path), None)


def check_paths(input_path: str, output: str) -> str:
    """The output format; a clear error for a local input that does not exist or an output that cannot be written."""
    is_glob = any(character in input_path for character in GLOB_CHARACTERS)
    if "://" not in input_path and not is_glob and not Path(input_path).exists():
        raise ValueError(f"input {input_path} does not exist: give a file, a folder or a glob Ray Data can read")
    suffix = Path(output).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(f"--output {output} must end in .parquet or .jsonl (the output format)")
    if not Path(output).parent.is_dir():
        raise ValueError(f"output folder {Path(output).parent} does not exist: create it first")
    return OUTPUT_FORMATS[suffix]


def check_threads_per_actor(threads: int) -> int:
    """`threads`, when some node of the cluster has that many CPUs: an actor reserving more never starts, and Ray
    Data would wait for it forever."""
    largest = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")), default=0)
    if threads > largest:
        raise ValueError(
            f"--threads-per-actor {threads} is more than the {int(largest)} CPU(s) of the largest Ray node, so no "
            f"actor could start: ask for at most {int(largest)} (or start the local Ray with more --num-cpus)"
        )
    return threads


def classify_dataset(
    bundle: str, paths: str | list[str], fmt: str, options: RayPredictOptions, variant: str, files: dict
) -> tuple[ray.data.Dataset, bool]:
    """The lazy dataset of predictions, in input order, and whether it read several files."""
    from ray.data import ActorPoolStrategy, DataContext

    DataContext.get_current().execution_options.preserve_order = True
    source = PredictTextDatasource(paths, fmt, options.field_name)
    threads = check_threads_per_actor(options.threads_per_actor)
    if options.actors:
        pool = ActorPoolStrategy(size=options.actors)
    else:
        pool = ActorPoolStrategy(min_size=1, max_size=max(1, int(ray.cluster_resources().get("CPU", 1)) // threads))
    # Reading is cheap next to the model: it takes no CPU of its own, so actors may hold every CPU and reading
    # still runs (with a CPU each, a 2-CPU Ray with 2 actors waits forever for a read task to start).
    read = ray.data.read_datasource(source, num_cpus=0)
    dataset = read.map_batches(
        ClassifyBlock,
        fn_constructor_kwargs={
            "bundle": str(Path(bundle).resolve()),
            "variant": variant,
            "threads": threads,
            "batch_size": options.batch_size,
            "logits": options.logits,
            "files": files,
        },
        batch_size=WINDOW,
        batch_format="pyarrow",
        compute=pool,
        num_cpus=threads,
    )
    return dataset, len(source._paths()) > 1


def run_predict_ray(
    bundle: str, input_path: str, output: str, options: RayPredictOptions | None = None, **fields: Any
) -> RaySummary:
    """Classify every line of `input_path` on Ray and write `output` (.parquet or .jsonl) in input order: columns
    line, text, label, score, scores (and file, when several files were read; logits with `options.logits`)."""
    options = replace(options, **fields) if options else RayPredictOptions(**fields)
    out_format = check_paths(input_path, output)
    paths = input_paths(input_path)
    fmt = input_format(paths, options.fmt)
    workload = workload_for(options.batch_size)  # the rule `predict` follows: the same bundle, the same variant
    classifier = load_classifier(bundle, options.variant, options.threads_per_actor, workload)
    print(f"predict-ray: {classifier.choice.line()}", file=sys.stderr)
    variant, labels, files = classifier.variant, classifier.labels, loaded_files(classifier)
    del classifier  # the actors load their own, and check it is the same export
    with ray_session(options.address, options.num_cpus):
        dataset, several_files = classify_dataset(bundle, paths, fmt, options, variant, files)
        batches = dataset.iter_batches(batch_format="pyarrow", batch_size=None)
        schema = output_schema(labels, options.logits, several_files)
        writer = write_parquet if out_format == "parquet" else write_jsonl
        return writer(checked(batches, options.skip_bad, schema), output, schema)


def output_schema(labels: list[str], logits: bool, several_files: bool) -> pa.Schema:
    """`predict`'s OUTPUT_COLUMNS (file first when several files were read; logits last when asked for)."""
    types = {"line": pa.int64(), "id": pa.string(), "text": pa.string(), "label": pa.string(), "score": pa.float64()}
    types["scores"] = pa.struct([(label, pa.float64()) for label in labels])
    columns = [("file", pa.string())] if several_files else []
    columns += [(name, types[name]) for name in OUTPUT_COLUMNS]
    return pa.schema(columns + ([("logits", pa.list_(pa.float32()))] if logits else []))


def checked(batches: Iterable[pa.Table], skip_bad: bool, schema: pa.Schema) -> Iterator[pa.Table | str]:
    """The output columns of each batch without its error rows; each skipped row's message is yielded too. The
    first error row stops the run (a fatal one even with `skip_bad`)."""
    for batch in batches:
        errors = batch.column("error")
        if errors.null_count < len(batch):
            fatal = batch.column("fatal").to_pylist()
            for message, stop in zip(errors.to_pylist(), fatal, strict=True):
                if message is not None and (stop or not skip_bad):
                    raise BadRow(message)
                if message is not None:
                    yield message
            batch = batch.filter(pc.is_null(errors))
        yield batch.select(schema.names).cast(schema)


def write_parquet(batches: Iterable[pa.Table | str], output: str, schema: pa.Schema) -> RaySummary:
    import pyarrow.parquet as pq

    summary = RaySummary()
    with atomic_path(output) as temporary, pq.ParquetWriter(temporary, schema) as writer:
        for batch in batches:
            if isinstance(batch, str):
                summary.skipped.append(batch)
                continue
            writer.write_table(batch)
            summary.written += len(batch)
    return summary


def write_jsonl(batches: Iterable[pa.Table | str], output: str, schema: pa.Schema) -> RaySummary:
    summary = RaySummary()
    with atomic_open(output) as out:
        for batch in batches:
            if isinstance(batch, str):
                summary.skipped.append(batch)
                continue
            out.writelines(json.dumps(row) + "\n" for row in batch.to_pylist())
            summary.written += len(batch)
    return summary
