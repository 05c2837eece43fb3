"""Teacher-labelled augmentation (TinyBERT's recipe): new training sentences made by swapping words for their
nearest neighbours in a model's word-embedding space, written as a GLUE-layout data folder whose teacher logits
label every row.

The folder holds `train.tsv` (the original rows first, then the new ones; a new row carries its source row's
label, which may no longer be true: distil it with `--distill-alpha 0` so only the teacher speaks),
`dev.tsv` (the validation split, unchanged), `teacher-logits.npz` (when a teacher was given) and `augment.json`;
`train.csv` and `dev.csv` (quoted as needed) when a text holds a tab or a newline, which GLUE TSV cannot hold.
The sentences depend only on the data, the embedding model and the seed, so logits shipped for them stay valid.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from sst2dist.atomic import replace_dir, write_json_atomic, writing
from sst2dist.data import Columns, load_sst2, split_labels
from sst2dist.distill.augment_options import AugmentError, AugmentOptions
from sst2dist.labels import LabelSet, parse_labels_option
from sst2dist.modeling import SST2_LABELS, resolve_model

LOGITS_FILE = "teacher-logits.npz"
# Swapping these mostly breaks grammar without teaching the student anything about sentiment.
KEEP_WORDS = frozenset({
    "a", "an", "the", "and", "or", "but", "of", "to", "in", "on", "at", "by", "for", "with", "from", "as", "is",
    "are", "was", "were", "be", "been", "it", "its", "this", "that", "these", "those", "he", "she", "they", "we",
    "you", "i", "his", "her", "their", "our", "your", "my", "me", "him", "them", "us",
})  # fmt: skip


def neighbour_table(model: str, k: int) -> dict[str, list[str]]:
    """Each whole-word vocabulary entry → its k nearest whole words by cosine of the input embeddings, nearest
    first. Computed in float64 with a stable sort, so that every CPU draws the same table (and the same
    sentences, which the shipped teacher logits depend on)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from sst2dist.pruned import is_pruned, load_pruned

    source = resolve_model(model)
    vocab = AutoTokenizer.from_pretrained(source).get_vocab()
    config = AutoConfig.from_pretrained(source)
    # A pruned folder (sst2dist prune) has FFN shapes that a plain from_pretrained refuses; its embeddings are whole.
    encoder = load_pruned(source, config) if is_pruned(config) else AutoModel.from_pretrained(source)
    weights = encoder.get_input_embeddings().weight.detach().double().numpy()
    words = sorted(word for word in vocab if word.isalpha() and len(word) > 1)
    vectors = weights[[vocab[word] for word in words]]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12
    table = {}
    for start in range(0, len(words), 1024):
        similarity = vectors[start : start + 1024] @ vectors.T
        rows = np.arange(similarity.shape[0])
        similarity[rows, rows + start] = -np.inf
        for row, nearest in enumerate(top_k_stable(similarity, k)):
            table[words[start + row]] = [words[j] for j in nearest]
    return table


def top_k_stable(scores: np.ndarray, k: int) -> list[np.ndarray]:
    """Per row, the first k columns of a stable descending sort (ties in column order), without sorting the row:
    every column scoring at least the row's k-th best is kept (ties included), and only those are sorted."""
    k = min(k, scores.shape[1])  # as argsort(...)[:, :k] would: every column when k exceeds them
    last = scores.shape[1] - k
    kth_best = np.partition(scores, last, axis=1)[:, last : last + 1]
    rows = []
    for row, candidates in zip(scores, scores >= kth_best, strict=True):
        columns = np.flatnonzero(candidates)
        rows.append(columns[np.argsort(-row[columns], kind="stable")[:k]])
    return rows


def make_variants(
    sentences: Sequence[str], table: dict[str, list[str]], config: AugmentOptions
) -> list[tuple[int, str]]:
    """(source row, new sentence) pairs: each sentence of at least `min_words` words gets up to `variants` new
    versions, each word swapped with probability `replace_prob`; repeats and unchanged copies are dropped."""
    rng = np.random.default_rng(config.seed)
    seen = set(sentences)
    made = []
    for index, sentence in enumerate(sentences):
        words = sentence.split(" ")
        swappable = [i for i, word in enumerate(words) if word in table and word not in KEEP_WORDS]
        if len(words) < config.min_words or not swappable:
            continue
        for _ in range(config.variants):
            draws = rng.random(len(swappable))
            picks = rng.integers(0, config.neighbours, len(swappable))
            new = list(words)
            for position, draw, pick in zip(swappable, draws, picks, strict=True):
                if draw < config.replace_prob:
                    new[position] = table[words[position]][pick]
            text = " ".join(new)
            if text not in seen:
                seen.add(text)
                made.append((index, text))
    return made


def split_format(texts: Iterable[str]) -> str:
    """GLUE TSV, unless a text holds a tab or a line break (a review of several lines): then CSV, quoted as needed."""
    return ".csv" if any(set(text) & set("\t\n\r") for text in texts) else ".tsv"


def write_split(path: Path, sentences: Sequence[str], labels: Sequence[str]) -> None:
    """A TSV or CSV split (by `path`'s suffix) with the labels as the data wrote them (SST-2's 0/1, or text)."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        if path.suffix == ".csv":
            csv.writer(handle).writerows([("sentence", "label"), *zip(sentences, labels, strict=True)])
            return
        handle.write("sentence\tlabel\n")
        handle.writelines(f"{sentence}\t{label}\n" for sentence, label in zip(sentences, labels, strict=True))


def augment(config: AugmentOptions) -> dict:
    """Write the augmented data folder at `config.output` (atomically) and return its summary."""
    output = Path(config.output)
    if output.exists() and any(output.iterdir()) and not config.force:
        raise AugmentError(f"{output} already holds files: pass --force to replace it, or pick another --output")
    columns = Columns(config.text_column, config.label_column)
    raw = load_sst2(config.data, columns=columns, labels=parse_labels_option(config.labels))
    train, validation = raw["train"], raw["validation"]
    sentences, labels, label_set = list(train["sentence"]), list(train["label"]), split_labels(train)
    table = neighbour_table(config.embeddings, config.neighbours)
    made = make_variants(sentences, table, config)
    all_sentences = sentences + [text for _, text in made]
    all_labels = labels + [labels[source] for source, _ in made]
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}."))
    staging.chmod(0o755)  # mkdtemp makes it private; a data folder is meant to be shared
    try:
        with writing("the augmented data", output):
            keys = [label_set.keys[i] for i in all_labels], [label_set.keys[i] for i in validation["label"]]
            suffix = split_format([*all_sentences, *validation["sentence"], *label_set.keys])
            write_split(staging / f"train{suffix}", all_sentences, keys[0])
            write_split(staging / f"dev{suffix}", validation["sentence"], keys[1])
            summary = {
                "config": asdict(config),
                "original_rows": len(sentences),
                "new_rows": len(made),
                "neighbours_sha256": hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest(),
            }
            if config.teacher:
                rows = (sentences, labels, all_sentences, all_labels)
                summary["teacher"] = label_with_teacher(config, *rows, staging, label_set)
            write_json_atomic(staging / "augment.json", summary)
            replace_dir(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(shards_folder(output), ignore_errors=True)  # kept until now so a killed run resumes them
    return summary


def shards_folder(output: Path) -> Path:
    """Where the teacher's shards wait beside `--output` until the folder is written (kept across a kill)."""
    return output.with_name(f".{output.name}.shards")


def label_with_teacher(
    config: AugmentOptions,
    sentences: list[str],
    labels: list[int],
    all_sentences: list[str],
    all_labels: list[int],
    folder: Path,
    label_set: LabelSet = SST2_LABELS,
) -> dict:
    """Teacher logits (fp16) for every row of the new training split, keyed by its fingerprint: the original
    rows' from `--teacher-logits` when given, every other row scored by `--scorer` in shards (`scoring`)."""
    from sst2dist.distill.scoring import SHARD_ROWS, assemble, make_scorer, score_in_shards, teacher_sha256_of
    from sst2dist.distill.teacher import (
        LogitsKey,
        check_logits_labels,
        check_teacher_labels,
        data_fingerprint,
        logits_meta,
        save_logits,
    )

    teacher = Path(config.teacher).expanduser()
    check_teacher_labels(config.teacher, teacher, label_set)
    teacher_sha256 = teacher_sha256_of(teacher)
    key = LogitsKey(teacher_sha256, data_fingerprint(all_sentences, all_labels), config.max_length)
    known, meta = np.zeros((0, len(label_set)), dtype=np.float32), logits_meta(teacher, key, len(all_sentences))
    if config.teacher_logits:
        known, meta = given_logits(config, teacher, teacher_sha256, sentences, labels)
        check_logits_labels(config.teacher_logits, known, meta, label_set)
    rest = all_sentences[len(known) :]
    scorer = make_scorer(teacher, config.max_length, config.scorer)
    shards = shards_folder(Path(config.output))
    score_in_shards(scorer, rest, shards, key)
    logits = np.concatenate([known, assemble(shards, rest, key, scorer.name, SHARD_ROWS, scorer.width)])
    record = {**meta, "key": asdict(key), "rows": len(all_sentences), "scorer": scorer.name}
    record["labels"] = list(label_set.names)  # what the logits' columns stand for
    record["augmented_from"] = data_fingerprint(sentences, labels)
    save_logits(folder / LOGITS_FILE, logits, record, dtype=np.float16)
    return {"teacher": str(teacher), "rows": len(all_sentences), "logits": LOGITS_FILE, "scorer": scorer.name}


def given_logits(
    config: AugmentOptions, teacher: Path, teacher_sha256: str, sentences: list[str], labels: list[int]
) -> tuple[np.ndarray, dict]:
    """`--teacher-logits` for the original rows, refused unless they came from `teacher` (same weights) at the
    same --max-length (the output is keyed by it)."""
    from sst2dist.distill.teacher import SHIPPED_LOGITS, data_fingerprint, logits_from_file

    name = config.teacher_logits
    path = Path(SHIPPED_LOGITS.get(name, name)).expanduser()
    logits, meta = logits_from_file(path, data_fingerprint(sentences, labels), len(sentences))
    if meta["key"]["teacher_sha256"] != teacher_sha256:
        raise AugmentError(
            f"--teacher-logits {name} came from another teacher than {teacher} "
            "(weights sha256 differ): pass the logits of this teacher, or leave --teacher-logits out"
        )
    if meta["key"].get("max_length") != config.max_length:
        raise AugmentError(
            f"--teacher-logits {name} were computed at --max-length {meta['key'].get('max_length')}, this run uses "
            f"{config.max_length}: pass --max-length {meta['key'].get('max_length')}, or leave --teacher-logits out"
        )
    return logits, meta


def describe(summary: dict) -> str:
    return json.dumps({k: v for k, v in summary.items() if k != "config"}, sort_keys=True)
