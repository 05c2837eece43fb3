"""Teacher scoring that is cheap and durable: sentences scored in shards that survive a kill.

The rows are cut into shards of `SHARD_ROWS` consecutive rows; each shard is scored in batches of similar length
and written atomically as `shard-START-STOP.npz` (fp16 `logits` — rows × the scorer's width: a logit per label, or the
teacher's sentence vectors for `--distill-sentence` — and a JSON `meta`: its row range, the sha256 of its
sentences, the teacher's weights sha256, the max length, the scorer and the width). A rerun keeps every shard whose meta
matches and scores only the others; a shard of other sentences, another teacher, max length or scorer is scored
again (and says why). Process r of N scores shards r, r + N, ...; once every shard exists, one file in the
`--teacher FILE.npz` format is assembled from them (`assemble`) and the shards are removed.

Two scorers of logits: `TorchScorer` (a model folder; bf16 autocast where the CPU has bf16) and `OnnxScorer` (a
bundle from `sst2dist export-onnx`, its fastest gated variant unless named: int8 or fp32 through onnxruntime); and
`TorchSentenceScorer`, the teacher's final first-token state (its sentence vector) instead of its logits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from sst2dist.atomic import atomic_path
from sst2dist.distill.logits import LogitsKey, TeacherError, load_logits, save_logits, teacher_weights_sha256
from sst2dist.locking import locked
from sst2dist.runtime import MANIFEST_FILE

if TYPE_CHECKING:
    import torch

SHARD_ROWS = 4096
SCORERS = ("torch", "onnx")
log = logging.getLogger(__name__)


class Scorer(Protocol):
    """Logits (or other per-sentence outputs, `width` wide) of one teacher for batches of sentences; `name` says
    which engine, precision and output (recorded)."""

    name: str
    batch_size: int
    width: int
    output: str  # what it scores, for the progress bar: "logits" or "sentence vectors"

    def token_counts(self, sentences: Sequence[str]) -> list[int]: ...

    def batch(self, sentences: Sequence[str]) -> np.ndarray: ...


# ------------------------------------------------------------------------------------------- the scorers


def is_bundle(teacher: Path) -> bool:
    return (teacher / MANIFEST_FILE).is_file()


def teacher_sha256_of(teacher: Path) -> str:
    """The teacher's weights sha256: of the model folder's weights, or of the weights a bundle was exported from,
    so logits from either engine carry the same teacher identity."""
    if not is_bundle(teacher):
        return teacher_weights_sha256(teacher)
    weights = json.loads((teacher / MANIFEST_FILE).read_text(encoding="utf-8")).get("source", {}).get("weights")
    if not weights:
        raise TeacherError(f"{teacher}/{MANIFEST_FILE} names no source weights: export the teacher again")
    return weights[0]["sha256"]


def make_scorer(teacher: Path, max_length: int, scorer: str | None = None) -> Scorer:
    """`torch` for a model folder, `onnx` for a bundle; `scorer` (when given) must agree with what `teacher` is."""
    kind = "onnx" if is_bundle(teacher) else "torch"
    if scorer not in (None, kind):
        wants = "a bundle from `sst2dist export-onnx`" if scorer == "onnx" else "a model folder (config.json)"
        raise TeacherError(f"--scorer {scorer} scores with {wants}, but {teacher} is not one: pass {wants}")
    if kind == "onnx":
        return OnnxScorer(teacher, max_length)
    if not (teacher / "config.json").is_file():
        raise TeacherError(f"teacher {teacher} is neither a model folder (config.json) nor a bundle (manifest.json)")
    return TorchScorer(teacher, max_length)


class TorchScorer:
    """A model folder in PyTorch, under bf16 autocast where the device has bf16 (`bf16=None`) or as asked."""

    wanted: dict = {}  # what the model's forward must also return for `outputs`
    output = "logits"

    def __init__(
        self, model_dir: Path, max_length: int, device: str = "cpu", bf16: bool | None = None, batch_size: int = 128
    ):
        import torch
        from transformers import AutoTokenizer

        from sst2dist.environment import supports_bf16
        from sst2dist.modeling import load_classifier_model

        self.device = torch.device(device)
        self.bf16 = (
            (supports_bf16() if self.device.type == "cpu" else torch.cuda.is_bf16_supported()) if bf16 is None else bf16
        )
        self.name = f"torch-{'bf16' if self.bf16 else 'fp32'}"
        self.max_length, self.batch_size = max_length, batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = load_classifier_model(model_dir).to(self.device).eval()
        self.width = self.model.config.num_labels

    def token_counts(self, sentences: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self.encode(sentences)]

    def encode(self, sentences: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(sentences), truncation=True, max_length=self.max_length)["input_ids"]

    def batch(self, sentences: Sequence[str]) -> np.ndarray:
        import torch

        padded = self.tokenizer(
            list(sentences), truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
        )
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            output = self.outputs(self.model(**{k: v.to(self.device) for k, v in padded.items()}, **self.wanted))
        return output.float().cpu().numpy()

    def outputs(self, model_outputs) -> torch.Tensor:
        return model_outputs.logits


class TorchSentenceScorer(TorchScorer):
    """The teacher's sentence vector: its last layer's state at the first token ([CLS]/<s>, what its classifier
    reads), `hidden_size` wide; read with the teacher's own tokenizer, so any student can be matched to it."""

    wanted = {"output_hidden_states": True}
    output = "sentence vectors"

    def __init__(self, model_dir: Path, max_length: int, **options: object):
        super().__init__(model_dir, max_length, **options)
        self.name += "-sentence"
        self.width = self.model.config.hidden_size

    def outputs(self, model_outputs) -> torch.Tensor:
        return model_outputs.hidden_states[-1][:, 0]


class OnnxScorer:
    """A bundle's variant through onnxruntime (`sst2dist.runtime.Classifier`), truncating at `max_length`."""

    def __init__(
        self,
        bundle_dir: Path,
        max_length: int,
        variant: str | None = None,
        batch_size: int = 64,
        threads: int | None = None,
    ):
        from sst2dist.runtime import Classifier

        self.classifier = Classifier(bundle_dir, variant=variant, threads=threads)
        # The logits' key names the max length: truncate there, not at the bundle's own maximum.
        self.classifier._tokenizer.enable_truncation(max_length=max_length)
        self.name = f"onnx-{self.classifier.variant}"
        self.batch_size, self.width, self.output = batch_size, len(self.classifier.labels), "logits"

    def token_counts(self, sentences: Sequence[str]) -> list[int]:
        return self.classifier.token_counts(sentences)

    def batch(self, sentences: Sequence[str]) -> np.ndarray:
        return self.classifier.run(self.classifier.encode(sentences))


def score_sorted(scorer: Scorer, sentences: Sequence[str], progress: object | None = None) -> np.ndarray:
    """Logits in the order of `sentences`, scored in batches of similar length (little padding)."""
    counts = scorer.token_counts(sentences)
    order = sorted(range(len(sentences)), key=counts.__getitem__)
    logits = np.zeros((len(sentences), scorer.width), dtype=np.float32)
    for start in range(0, len(order), scorer.batch_size):
        rows = order[start : start + scorer.batch_size]
        logits[rows] = scorer.batch([sentences[i] for i in rows])
        if progress is not None:
            progress.update(len(rows))
    return logits


# ------------------------------------------------------------------------------------------- the shards


def rows_sha256(sentences: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for sentence in sentences:
        digest.update(f"{sentence}\n".encode())
    return digest.hexdigest()


def shard_ranges(rows: int, shard_rows: int = SHARD_ROWS) -> list[tuple[int, int]]:
    return [(start, min(start + shard_rows, rows)) for start in range(0, rows, shard_rows)]


def shards_folder(path: Path) -> Path:
    """Where the shards of the logits file `path` wait until all exist: `.shards-NAME/` beside it."""
    return path.with_name(f".shards-{path.stem}")


def shard_path(folder: Path, start: int, stop: int) -> Path:
    return folder / f"shard-{start:09d}-{stop:09d}.npz"


def shard_meta(sentences: Sequence[str], start: int, stop: int, key: LogitsKey, scorer: str, width: int = 2) -> dict:
    """What a shard's logits depend on; the whole data's sha256 is recorded too, but only its rows decide."""
    return {
        "width": width,
        "start": start,
        "stop": stop,
        "rows_sha256": rows_sha256(sentences[start:stop]),
        "data_sha256": key.data_sha256,
        "teacher_sha256": key.teacher_sha256,
        "max_length": key.max_length,
        "scorer": scorer,
    }


def write_shard(path: Path, logits: np.ndarray, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, "a shard of teacher logits") as temporary, temporary.open("wb") as handle:
        np.savez(handle, logits=logits.astype(np.float16), meta=np.array(json.dumps(meta, sort_keys=True)))


def read_shard(path: Path, expected: dict) -> tuple[np.ndarray | None, str]:
    """The shard's logits when it was scored for `expected` (its meta), else None and why it cannot be used."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            logits, meta = stored["logits"], json.loads(str(stored["meta"]))
    except FileNotFoundError:
        return None, "missing"
    except (OSError, KeyError, ValueError) as err:
        return None, f"unreadable ({err})"
    for field, what in (
        ("rows_sha256", "other sentences"),
        ("teacher_sha256", "another teacher"),
        ("max_length", "another max length"),
        ("scorer", "another scorer"),
    ):
        if meta.get(field) != expected[field]:
            return (
                None,
                f"scored for {what} ({field} {str(meta.get(field))[:16]}, this run {str(expected[field])[:16]})",
            )
    shape = (expected["stop"] - expected["start"], expected["width"])
    if logits.shape != shape or not np.isfinite(logits).all():
        return None, f"holds {logits.shape} values, not {shape} finite ones"
    return logits, "ok"


def score_in_shards(
    scorer: Scorer,
    sentences: Sequence[str],
    folder: Path,
    key: LogitsKey,
    *,
    rank: int = 0,
    world: int = 1,
    shard_rows: int = SHARD_ROWS,
    show_progress: bool = True,
) -> int:
    """Score this process's shards (indices rank, rank + world, ...) that are not already in `folder`; returns
    the rows scored now. The progress bar counts this process's rows, the resumed ones included."""
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    mine = shard_ranges(len(sentences), shard_rows)[rank::world]
    todo = [(start, stop) for start, stop in mine if not shard_is_done(folder, sentences, start, stop, key, scorer)]
    done_rows = sum(stop - start for start, stop in mine) - sum(stop - start for start, stop in todo)
    desc = f"teacher {scorer.output}" + (f" (process {rank + 1}/{world})" if world > 1 else "")
    total = sum(stop - start for start, stop in mine)
    with tqdm(total=total, initial=done_rows, desc=desc, unit="row", disable=not show_progress) as progress:
        for start, stop in todo:
            logits = score_sorted(scorer, sentences[start:stop], progress)
            meta = shard_meta(sentences, start, stop, key, scorer.name, scorer.width)
            write_shard(shard_path(folder, start, stop), logits, meta)
    return total - done_rows


def shard_is_done(
    folder: Path, sentences: Sequence[str], start: int, stop: int, key: LogitsKey, scorer: Scorer
) -> bool:
    path = shard_path(folder, start, stop)
    logits, why = read_shard(path, shard_meta(sentences, start, stop, key, scorer.name, scorer.width))
    if logits is None and why != "missing":
        log.warning("%s was %s: scoring it again", path, why)
    return logits is not None


def assemble(
    folder: Path, sentences: Sequence[str], key: LogitsKey, scorer: str, shard_rows: int, width: int = 2
) -> np.ndarray:
    """Every shard's logits joined in row order (fp16), or a TeacherError naming the first shard missing."""
    parts = []
    for start, stop in shard_ranges(len(sentences), shard_rows):
        path = shard_path(folder, start, stop)
        logits, why = read_shard(path, shard_meta(sentences, start, stop, key, scorer, width))
        if logits is None:
            raise TeacherError(f"{path} is {why}: score the missing shards first (rerun the same command)")
        parts.append(logits)
    return np.concatenate(parts) if parts else np.zeros((0, width), dtype=np.float16)


def finish(
    folder: Path,
    path: Path,
    sentences: Sequence[str],
    key: LogitsKey,
    scorer: str,
    meta: dict,
    shard_rows: int,
    width: int = 2,
) -> None:
    """Write the logits file at `path` from the shards (fp16, keyed by `key`), then remove the shards; under the
    cache's exclusive lock, which waits until no other run still scores into them (`scoring_lock`), and reusing
    the file when another run wrote it meanwhile."""
    with locked(lock_file(path)):
        if not written_for(path, key, scorer, len(sentences)):
            logits = assemble(folder, sentences, key, scorer, shard_rows, width)
            record = {**meta, "key": asdict(key), "rows": len(sentences), "scorer": scorer, "shard_rows": shard_rows}
            save_logits(path, logits, record, dtype=np.float16)
        shutil.rmtree(folder, ignore_errors=True)


def lock_file(path: Path) -> Path:
    """`NAME.npz.lock` beside the logits file (empty; kept, see `locking.locked`)."""
    return path.with_name(f"{path.name}.lock")


def scoring_lock(path: Path):  # -> context manager
    """Held (shared) while a process scores shards of `path`: `finish` removes them only once none does."""
    return locked(lock_file(path), shared=True)


def written_for(path: Path, key: LogitsKey, scorer: str, rows: int) -> bool:
    """`path` already holds these logits (another run on this cache finished them first)."""
    if not path.is_file():
        return False
    try:
        values, meta = load_logits(path)
    except TeacherError:
        return False
    return meta.get("key") == asdict(key) and meta.get("scorer") == scorer and len(values) == rows


def score_to_file(
    scorer: Scorer,
    sentences: Sequence[str],
    key: LogitsKey,
    path: Path,
    meta: dict,
    *,
    folder: Path | None = None,
    shard_rows: int = SHARD_ROWS,
    show_progress: bool = True,
) -> np.ndarray:
    """One process: score every shard not yet in `folder` (default `.shards-NAME/` beside `path`), write the
    logits file at `path` and return its logits."""
    folder = folder or shards_folder(path)
    with scoring_lock(path):
        score_in_shards(scorer, sentences, folder, key, shard_rows=shard_rows, show_progress=show_progress)
    finish(folder, path, sentences, key, scorer.name, meta, shard_rows, scorer.width)
    return load_logits(path)[0]
