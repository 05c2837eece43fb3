"""The teacher's logits over the training split: from a file shipped in the package or given, from the cache, or
computed once by the teacher model (`scoring`: shards that survive a kill) and cached; and, for
`--distill-sentence`, the teacher's sentence vectors, computed and cached the same way.

The file format and its key (the teacher's weights sha256, the training data's sha256, the max length) are in
`logits`. A file is only trusted for the training split it was computed on (`meta["key"]["data_sha256"]`), so a
run never distils from logits of other sentences.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sst2dist.atomic import atomic_open
from sst2dist.distill.logits import (
    LogitsKey,
    TeacherError,
    data_fingerprint,
    load_logits,
    teacher_weights_sha256,
)
from sst2dist.distill.logits import save_logits as save_logits  # callers import the format from here too
from sst2dist.labels import SST2_NAMES, LabelSet, check_model_labels
from sst2dist.modeling import SST2_LABELS, check_trained_labels
from sst2dist.packaged import default_cache_dir

if TYPE_CHECKING:
    from accelerate import Accelerator

SHIPPED_LOGITS_DIR = Path(__file__).parent / "teachers"
# Logits shipped with the package: the fine-tuned all-mpnet-base-v2 over the 67,349 GLUE SST-2 training rows.
# And over the rows `sst2dist augment --data <GLUE SST-2>` makes with its defaults (the original rows first).
SHIPPED_LOGITS = {
    "packaged:all-mpnet-base-v2-sst2": SHIPPED_LOGITS_DIR / "all-mpnet-base-v2-sst2.npz",
    "packaged:all-mpnet-base-v2-sst2-aug": SHIPPED_LOGITS_DIR / "all-mpnet-base-v2-sst2-aug.npz",
}

# ---------------------------------------------------------------------------------------------- the logits


def teacher_logits(
    teacher: str,
    sentences: Sequence[str],
    labels: Sequence[int],
    max_length: int,
    accelerator: Accelerator,
    cache_dir: Path | None = None,
    label_set: LabelSet = SST2_LABELS,
) -> tuple[np.ndarray, dict]:
    """The teacher's logits for every training row, with their metadata: from a logits file, the cache, or
    computed by the teacher model (sharded over the processes) and cached; refused unless they are logits of
    the data's labels (`label_set`), in its order."""
    data_sha256 = data_fingerprint(sentences, labels)
    if teacher in SHIPPED_LOGITS or teacher.endswith(".npz"):
        logits, meta = logits_from_file(Path(SHIPPED_LOGITS.get(teacher, teacher)), data_sha256, len(sentences))
        check_logits_labels(teacher, logits, meta, label_set)
        return logits, meta
    model_dir = Path(teacher).expanduser()
    if not (model_dir / "config.json").is_file():
        raise TeacherError(
            f"--teacher {teacher} is neither a model folder (no config.json) nor a .npz logits file "
            f"nor one of {', '.join(SHIPPED_LOGITS)}"
        )
    check_teacher_labels(teacher, model_dir, label_set)
    key = LogitsKey(teacher_weights_sha256(model_dir), data_sha256, max_length)
    path = (cache_dir or default_cache_dir() / "teacher-logits") / key.filename
    logits, meta = cached_outputs(model_dir, sentences, key, path, accelerator)
    check_logits_labels(teacher, logits, meta, label_set)
    return logits, meta


def check_teacher_labels(teacher: str, folder: Path, label_set: LabelSet) -> None:
    """A teacher model (or a bundle keeping its config.json) must have been trained on the data's labels."""
    if (folder / "config.json").is_file():
        from transformers import AutoConfig

        check_trained_labels("--teacher", teacher, AutoConfig.from_pretrained(folder), label_set)


def check_logits_labels(teacher: str, logits: np.ndarray, meta: dict, label_set: LabelSet) -> None:
    """Logits are one column per label, keyed by the label names (`meta["labels"]`; files written before names
    were recorded are SST-2's)."""
    trained_on = LabelSet.from_names(meta.get("labels") or SST2_NAMES)
    if logits.shape[1] != len(trained_on):
        raise TeacherError(f"{teacher} holds {logits.shape[1]} logits a row for {len(trained_on)} labels: recompute it")
    check_model_labels("--teacher", teacher, trained_on, label_set)


def teacher_sentence_vectors(
    teacher: str, rows: Mapping[str, Sequence], max_length: int, accelerator: Accelerator, cache_dir: Path | None = None
) -> np.ndarray:
    """The teacher model's sentence vector for every training row (`rows["sentence"]`, `rows["label"]`) for
    `--distill-sentence`: computed once in shards like its logits, cached beside them (`sentences-NAME.npz`)."""
    model_dir = Path(teacher).expanduser()
    if not (model_dir / "config.json").is_file():
        raise TeacherError(
            f"--distill-sentence matches the teacher model's sentence vectors, and {teacher} is not a model folder "
            "(no config.json): pass --layer-teacher MODEL_DIR"
        )
    sentences = rows["sentence"]
    key = LogitsKey(teacher_weights_sha256(model_dir), data_fingerprint(sentences, rows["label"]), max_length)
    path = (cache_dir or default_cache_dir() / "teacher-logits") / f"sentences-{key.filename}"
    return cached_outputs(model_dir, sentences, key, path, accelerator, sentence_vectors=True)[0]


def cached_outputs(
    model_dir: Path,
    sentences: Sequence[str],
    key: LogitsKey,
    path: Path,
    accelerator: Accelerator,
    sentence_vectors: bool = False,
) -> tuple[np.ndarray, dict]:
    """The teacher's outputs from `path`, computed there first when it is missing (`compute_and_cache`), and
    refused when the file is not what its name says."""
    if not on_every_process(accelerator, path.is_file()):  # one decision: every process scores, or none does
        compute_and_cache(model_dir, sentences, key, path, accelerator, sentence_vectors)
    elif accelerator.is_main_process:
        remove_leftover_shards(path)
    values, meta = load_logits(path)
    width_ok = sentence_vectors or values.shape[1] == len(meta.get("labels") or SST2_NAMES)  # logits: one per label
    if meta.get("key") != asdict(key) or len(values) != len(sentences) or not width_ok:
        raise TeacherError(f"{path} does not match its name (teacher, data or max length): delete it to recompute")
    return values, meta


def remove_leftover_shards(path: Path) -> None:
    """The shards of a run killed after it wrote `path` and before it removed them: removed under the cache's
    exclusive lock (`finish` removes them the same way), so no run still scoring into them loses them."""
    import shutil

    from sst2dist.distill.scoring import lock_file, shards_folder
    from sst2dist.locking import locked

    folder = shards_folder(path)
    if folder.exists():
        with locked(lock_file(path)):
            shutil.rmtree(folder, ignore_errors=True)


def logits_from_file(path: Path, data_sha256: str, rows: int) -> tuple[np.ndarray, dict]:
    if not path.is_file():
        raise TeacherError(f"teacher logits file {path} does not exist")
    logits, meta = load_logits(path)
    if meta.get("key", {}).get("data_sha256") != data_sha256 or len(logits) != rows:
        raise TeacherError(
            f"{path} holds logits for other training data ({len(logits)} rows, data sha256 "
            f"{meta.get('key', {}).get('data_sha256', '?')[:12]}…); this run has {rows} training rows. "
            "Use the same --data, or pass the teacher's model folder to --teacher to compute logits for this data"
        )
    labels = len(meta.get("labels") or SST2_NAMES)  # a logit per label the teacher was trained on
    if logits.ndim != 2 or logits.shape[1] != labels:  # e.g. the sentence vectors cached beside the logits
        width = logits.shape[1] if logits.ndim == 2 else "?"
        raise TeacherError(f"{path} holds {width} values per row, not {labels} logits: pass a teacher-logits .npz")
    return logits, meta


def compute_and_cache(
    model_dir: Path,
    sentences: Sequence[str],
    key: LogitsKey,
    path: Path,
    accelerator: Accelerator,
    sentence_vectors: bool = False,
) -> None:
    """Each process scores shards rank, rank + N, ... into `.shards-NAME/` beside `path` (kept across a kill, so a
    rerun scores only the missing ones); the main process joins them into the file (`distill.scoring`). The
    teacher's logits, or with `sentence_vectors` its sentence vectors (`TorchSentenceScorer`)."""
    from sst2dist.distill.scoring import (
        SHARD_ROWS,
        TorchScorer,
        TorchSentenceScorer,
        finish,
        score_in_shards,
        scoring_lock,
        shards_folder,
    )

    folder = shards_folder(path)
    require_shared_folder(path.parent, accelerator)
    bf16 = accelerator.mixed_precision == "bf16"
    kind = TorchSentenceScorer if sentence_vectors else TorchScorer
    scorer = kind(model_dir, key.max_length, device=accelerator.device, bf16=bf16)
    rank, world, show = accelerator.process_index, accelerator.num_processes, accelerator.is_local_main_process
    with scoring_lock(path):
        score_in_shards(scorer, sentences, folder, key, rank=rank, world=world, show_progress=show)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        meta = logits_meta(model_dir, key, len(sentences))
        finish(folder, path, sentences, key, scorer.name, meta, SHARD_ROWS, scorer.width)
    accelerator.wait_for_everyone()


def on_every_process(accelerator: Accelerator, fact: bool) -> bool:
    """`fact` holds on every process (each may see its own file system)."""
    if accelerator.num_processes == 1:
        return fact
    import torch

    return bool(accelerator.gather(torch.tensor([fact], device=accelerator.device)).all())


def require_shared_folder(folder: Path, accelerator: Accelerator) -> None:
    """Processes score shards into `folder` and the main process joins them: refuse, before scoring, when a process
    does not see what the main process writes there (machines each with their own cache folder)."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import broadcast_object_list

    folder.mkdir(parents=True, exist_ok=True)
    token = [uuid.uuid4().hex if accelerator.is_main_process else None]
    broadcast_object_list(token)
    probe = folder / f".shared-by-every-process-{token[0]}"  # per launch: concurrent runs share the cache
    if accelerator.is_main_process:
        with atomic_open(probe, "the shared-folder probe") as handle:
            handle.write(token[0])
    accelerator.wait_for_everyone()
    try:
        seen = probe.read_text(encoding="utf-8") == token[0]
    except FileNotFoundError:
        seen = False
    shared = on_every_process(accelerator, seen)  # every process has read the probe once this returns
    if accelerator.is_main_process:
        probe.unlink(missing_ok=True)
    if not shared:
        raise TeacherError(
            f"teacher scoring with {accelerator.num_processes} processes needs a teacher cache that every process "
            f"shares, and some process does not see {folder} of the main process: pass --teacher-cache a folder "
            "on a file system every machine mounts (or score once on one machine and pass the .npz to --teacher)"
        )


def logits_meta(model_dir: Path, key: LogitsKey, rows: int) -> dict:
    """What a reader of the file needs to trust it: its key, and the teacher's own dev accuracy when known."""
    meta: dict = {"key": asdict(key), "rows": rows, "teacher": model_dir.name}
    config_file = model_dir / "config.json"
    if config_file.is_file():  # the label names the logits' columns stand for
        id2label = json.loads(config_file.read_text(encoding="utf-8")).get("id2label") or {}
        meta["labels"] = [id2label[str(i)] for i in range(len(id2label))] or None
    metrics_file = model_dir.parent / "metrics.json"
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        meta["teacher_dev_accuracy"] = metrics.get("best_accuracy")
    return meta
