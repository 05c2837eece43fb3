"""Teacher-labelled augmentation (TinyBERT's recipe): new training sentences made by swapping words for their
nearest neighbours in a model's word-embedding space, written as a GLUE-layout data folder whose teacher logits
label every row.

The folder holds `train.tsv` (the original rows first, then the new ones; a new row carries its source row's
label, which may no longer be true: distil it with `--distill-alpha 0` so only the teacher speaks),
`dev.tsv` (the validation split, unchanged), `teacher-logits.npz` (when a teacher was given) and `augment.json`.
The sentences depend only on the data, the embedding model and the seed, so logits shipped for them stay valid.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from sst2dist.atomic import replace_dir, write_json_atomic, writing
from sst2dist.data import load_sst2
from sst2dist.distill.augment_options import AugmentError, AugmentOptions
from sst2dist.modeling import resolve_model

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
    from transformers import AutoModel, AutoTokenizer

    source = resolve_model(model)
    vocab = AutoTokenizer.from_pretrained(source).get_vocab()
    weights = AutoModel.from_pretrained(source).get_input_embeddings().weight.detach().double().numpy()
    words = sorted(word for word in vocab if word.isalpha() and len(word) > 1)
    vectors = weights[[vocab[word] for word in words]]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12
    table = {}
    for start in range(0, len(words), 1024):
        similarity = vectors[start : start + 1024] @ vectors.T
        rows = np.arange(similarity.shape[0])
        similarity[rows, rows + start] = -np.inf
        nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
        for row, candidates in enumerate(nearest):
            table[words[start + row]] = [words[j] for j in candidates]
    return table


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


def write_tsv(path: Path, sentences: Sequence[str], labels: Sequence[int]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        handle.write("sentence\tlabel\n")
        for sentence, label in zip(sentences, labels, strict=True):
            if "\t" in sentence or "\n" in sentence:
                raise AugmentError(f"sentence {sentence[:40]!r} holds a tab or a newline, which GLUE TSV cannot hold")
            handle.write(f"{sentence}\t{label}\n")


def augment(config: AugmentOptions) -> dict:
    """Write the augmented data folder at `config.output` (atomically) and return its summary."""
    output = Path(config.output)
    if output.exists() and any(output.iterdir()) and not config.force:
        raise AugmentError(f"{output} already holds files: pass --force to replace it, or pick another --output")
    raw = load_sst2(config.data)
    train, validation = raw["train"], raw["validation"]
    sentences, labels = list(train["sentence"]), list(train["label"])
    table = neighbour_table(config.embeddings, config.neighbours)
    made = make_variants(sentences, table, config)
    all_sentences = sentences + [text for _, text in made]
    all_labels = labels + [labels[source] for source, _ in made]
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}."))
    staging.chmod(0o755)  # mkdtemp makes it private; a data folder is meant to be shared
    try:
        with writing("the augmented data", output):
            write_tsv(staging / "train.tsv", all_sentences, all_labels)
            write_tsv(staging / "dev.tsv", list(validation["sentence"]), list(validation["label"]))
            summary = {
                "config": asdict(config),
                "original_rows": len(sentences),
                "new_rows": len(made),
                "neighbours_sha256": hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest(),
            }
            if config.teacher:
                summary["teacher"] = label_with_teacher(config, sentences, labels, all_sentences, all_labels, staging)
            write_json_atomic(staging / "augment.json", summary)
            replace_dir(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def label_with_teacher(
    config: AugmentOptions,
    sentences: list[str],
    labels: list[int],
    all_sentences: list[str],
    all_labels: list[int],
    folder: Path,
) -> dict:
    """Teacher logits for every row of the new training split: the original rows' from `--teacher-logits` or
    the teacher's cache, the new rows' computed here; saved keyed by the new split's fingerprint."""
    from accelerate import Accelerator

    from sst2dist.distill.teacher import (
        LogitsKey,
        data_fingerprint,
        save_logits,
        score,
        teacher_logits,
        teacher_weights_sha256,
    )
    from sst2dist.environment import default_mixed_precision

    model_dir = Path(config.teacher).expanduser()
    accelerator = Accelerator(mixed_precision=default_mixed_precision(on_gpu=False))
    original, meta = teacher_logits(
        config.teacher_logits or config.teacher, sentences, labels, config.max_length, accelerator
    )
    # Logits from the model folder are keyed by its hash already; a logits file must prove it came from it.
    teacher_sha256 = teacher_weights_sha256(model_dir) if config.teacher_logits else meta["key"]["teacher_sha256"]
    if meta["key"]["teacher_sha256"] != teacher_sha256:
        raise AugmentError(
            f"--teacher-logits {config.teacher_logits} came from another teacher than {model_dir} "
            "(weights sha256 differ): pass the logits of this teacher, or leave --teacher-logits out"
        )
    new = score(model_dir, all_sentences[len(sentences) :], config.max_length, accelerator)
    key = LogitsKey(teacher_sha256, data_fingerprint(all_sentences, all_labels), config.max_length)
    record = {**meta, "key": asdict(key), "rows": len(all_sentences), "augmented_from": meta["key"]["data_sha256"]}
    save_logits(folder / LOGITS_FILE, np.concatenate([original, new]), record)
    return {"teacher": str(model_dir), "rows": len(all_sentences), "logits": LOGITS_FILE}


def describe(summary: dict) -> str:
    return json.dumps({k: v for k, v in summary.items() if k != "config"}, sort_keys=True)
