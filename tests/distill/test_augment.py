"""Teacher-labelled augmentation: the word swaps, the neighbour table, and a folder the trainer distils from."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_tiny_model

from sst2dist.cli import main
from sst2dist.distill.augment import KEEP_WORDS, augment, make_variants, neighbour_table, top_k_stable
from sst2dist.distill.augment_options import AugmentError, AugmentOptions
from sst2dist.distill.teacher import data_fingerprint, load_logits

REPO_ROOT = Path(__file__).resolve().parents[2]
TABLE = {
    "good": ["great", "fine", "bad"],
    "film": ["movie", "picture", "story"],
    "dull": ["boring", "bland", "lively"],
    "the": ["a", "this", "that"],
    "plot": ["story", "script", "tale"],
}
SENTENCES = ["the film is good", "a dull plot", "good", "the plot of the film is dull and long", "no swaps here at all"]
TRAIN = [
    ("a gorgeous , witty , seductive movie .", 1),
    ("the story is dull and the acting is wooden", 0),
    ("it 's a charming and often affecting journey", 1),
    ("a lifeless , boring mess from start to finish", 0),
    ("the performances are strong and the script is smart", 1),
    ("an ugly , pointless and tedious film", 0),
    ("fine", 1),
    ("never again", 0),
]


def config(**overrides: object) -> AugmentOptions:
    values: dict = {"data": "unused", "output": "unused", "variants": 3, "neighbours": 3, "min_words": 3, "seed": 7}
    return AugmentOptions(**{**values, **overrides})


def test_variants_swap_only_table_words_for_their_neighbours() -> None:
    made = make_variants(SENTENCES, TABLE, config(replace_prob=1.0))
    assert made, "every swappable word is swapped at probability 1"
    for source, text in made:
        old, new = SENTENCES[source].split(" "), text.split(" ")
        assert len(old) == len(new)
        for before, after in zip(old, new, strict=True):
            if before in TABLE and before not in KEEP_WORDS:
                assert after in TABLE[before]
            else:
                assert after == before
    assert {source for source, _ in made} == {0, 1, 3}, "short or unswappable sentences are left alone"


def test_variants_are_new_unique_and_follow_the_seed() -> None:
    made = make_variants(SENTENCES, TABLE, config(replace_prob=0.5))
    texts = [text for _, text in made]
    assert len(set(texts)) == len(texts)
    assert not set(texts) & set(SENTENCES)
    assert make_variants(SENTENCES, TABLE, config(replace_prob=0.5)) == made
    assert make_variants(SENTENCES, TABLE, config(replace_prob=0.5, seed=8)) != made


def test_the_neighbour_table_holds_the_nearest_words_by_cosine(tiny_model_dir: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    table = neighbour_table(str(tiny_model_dir), 5)
    vocab = AutoTokenizer.from_pretrained(tiny_model_dir).get_vocab()
    weights = AutoModel.from_pretrained(tiny_model_dir).get_input_embeddings().weight.detach().double().numpy()
    words = sorted(table)
    vectors = weights[[vocab[w] for w in words]]
    vectors = vectors / (np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12)
    assert "good" in table and "##s" not in table and "[CLS]" not in table
    for word in ("good", "film", "boring", *words[::997]):
        similarity = vectors @ vectors[words.index(word)]
        similarity[words.index(word)] = -np.inf
        assert table[word] == [words[i] for i in np.argsort(-similarity, kind="stable")[:5]]


@pytest.mark.slow  # two neighbour tables of the whole vocabulary: ~20 s on 2 cores
def test_a_pruned_model_gives_the_same_neighbours_as_its_source(tiny_model_dir: Path, tmp_path: Path) -> None:
    from sst2dist.modeling import load_model, load_tokenizer
    from sst2dist.pruned import prune_model

    pruned = load_model(str(tiny_model_dir))
    prune_model(pruned, [[0], [0, 1]], [list(range(10)), list(range(64))])  # narrower FFNs: a non-standard shape
    pruned.save_pretrained(tmp_path / "pruned")
    load_tokenizer(str(tiny_model_dir)).save_pretrained(tmp_path / "pruned")
    assert neighbour_table(str(tmp_path / "pruned"), 3) == neighbour_table(str(tiny_model_dir), 3)


def test_top_k_keeps_a_stable_sorts_order_through_ties() -> None:
    scores = np.random.default_rng(0).integers(0, 4, size=(50, 40)).astype(np.float64)
    scores[:, 7] = -np.inf
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :6]
    assert [list(row) for row in top_k_stable(scores, 6)] == [list(row) for row in expected]
    every_column = np.argsort(-scores, axis=1, kind="stable")
    assert [list(row) for row in top_k_stable(scores, 99)] == [list(row) for row in every_column]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"variants": 0}, "--variants must be >= 1, got 0"),
        ({"replace_prob": 0.0}, "--replace-prob must be in (0, 1], got 0.0"),
        ({"replace_prob": 1.5}, "--replace-prob must be in [0, 1], got 1.5"),
        ({"teacher_logits": "x.npz"}, "also pass --teacher"),
    ],
)
def test_bad_settings_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(AugmentError, match=re.escape(message)):
        config(**overrides)


def write_data(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rows = "".join(f"{sentence}\t{label}\n" for sentence, label in TRAIN)
    (folder / "train.tsv").write_text("sentence\tlabel\n" + rows, encoding="utf-8")
    (folder / "dev.tsv").write_text("sentence\tlabel\n" + rows, encoding="utf-8")
    return folder


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return write_data(tmp_path / "data")


@pytest.mark.slow
def test_the_augmented_folder_is_labelled_by_the_teacher_and_trains(
    data_dir: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SST2DIST_CACHE", str(tmp_path / "cache"))
    output = tmp_path / "aug"
    settings = {"embeddings": str(tiny_model_dir), "teacher": str(tiny_model_dir), "min_words": 3, "variants": 2}
    summary = augment(config(data=str(data_dir), output=str(output), **settings))

    train_rows = [line.split("\t") for line in (output / "train.tsv").read_text().splitlines()[1:]]
    sentences, labels = [s for s, _ in train_rows], [int(y) for _, y in train_rows]
    assert sentences[: len(TRAIN)] == [s for s, _ in TRAIN]
    assert len(sentences) == len(TRAIN) + summary["new_rows"] and summary["new_rows"] > len(TRAIN)
    assert (output / "dev.tsv").read_text() == (data_dir / "dev.tsv").read_text()
    logits, meta = load_logits(output / "teacher-logits.npz")
    assert logits.shape == (len(sentences), 2)
    assert meta["key"]["data_sha256"] == data_fingerprint(sentences, labels)
    assert np.isfinite(logits).all() and len({tuple(row) for row in logits.round(4)}) > 1

    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "sst2dist.train", "--data", output, "--model", tiny_model_dir,
        "--teacher", output / "teacher-logits.npz", "--distill-alpha", 0, "--output-dir", run,
        "--max-steps", 2, "--batch-size", 8, "--eval-every", 0, "--save-every", 0,
    ]  # fmt: skip
    result = subprocess.run(
        [str(part) for part in command], cwd=REPO_ROOT, env=os.environ, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (run / "metrics.json").is_file()


@pytest.mark.slow
def test_a_failed_augment_leaves_the_earlier_folder_as_it_was(data_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "aug"
    output.mkdir()
    (output / "train.tsv").write_text("sentence\tlabel\nkept\t1\n")
    with pytest.raises(AugmentError, match="--force"):
        augment(config(data=str(data_dir), output=str(output)))
    other_teacher = make_tiny_model(tmp_path / "teacher-a", seed=1)
    logits_of_another = make_tiny_model(tmp_path / "teacher-b", seed=2)
    from sst2dist.distill.teacher import LogitsKey, save_logits, teacher_weights_sha256

    key = LogitsKey(teacher_weights_sha256(logits_of_another), data_fingerprint(*zip(*TRAIN, strict=True)), 128)
    save_logits(tmp_path / "b.npz", np.zeros((len(TRAIN), 2)), {"key": key.__dict__, "rows": len(TRAIN)})
    settings = {
        "embeddings": str(other_teacher),
        "teacher": str(other_teacher),
        "teacher_logits": str(tmp_path / "b.npz"),
    }
    with pytest.raises(AugmentError, match="another teacher"):
        augment(config(data=str(data_dir), output=str(output), force=True, **settings))
    assert (output / "train.tsv").read_text() == "sentence\tlabel\nkept\t1\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".aug")) == []


def test_the_command_reports_bad_input_in_one_sentence(data_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["augment", "--data", str(data_dir), "--output", str(tmp_path / "o"), "--variants", "0"]
    )
    assert result.exit_code == 1
    assert "Error: --variants must be >= 1, got 0" in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_the_shipped_augmented_logits_fit_what_augment_makes_without_a_teacher(
    sst2_dir: Path, tmp_path: Path, accelerator
) -> None:
    from sst2dist.distill.teacher import teacher_logits

    output = tmp_path / "aug"
    summary = augment(AugmentOptions(data=str(sst2_dir), output=str(output)))
    assert not (output / "teacher-logits.npz").exists()
    train_rows = [line.split("\t") for line in (output / "train.tsv").read_text().splitlines()[1:]]
    sentences, labels = [s for s, _ in train_rows], [int(y) for _, y in train_rows]
    assert len(sentences) == 67349 + summary["new_rows"]
    logits, meta = teacher_logits("packaged:all-mpnet-base-v2-sst2-aug", sentences, labels, 128, accelerator)
    assert logits.shape == (len(sentences), 2)
    assert (logits[:67349].argmax(axis=1) == np.array(labels[:67349])).mean() > 0.9
    assert meta["teacher_dev_accuracy"] >= 0.935


def test_teacher_logits_of_another_max_length_are_refused(data_dir: Path, tmp_path: Path) -> None:
    """Logits keyed at 128 tokens are not the teacher's logits at --max-length 8: the output would be keyed 8."""
    from sst2dist.distill.teacher import LogitsKey, save_logits, teacher_weights_sha256

    teacher = make_tiny_model(tmp_path / "teacher", seed=1)
    key = LogitsKey(teacher_weights_sha256(teacher), data_fingerprint(*zip(*TRAIN, strict=True)), 128)
    save_logits(tmp_path / "at128.npz", np.zeros((len(TRAIN), 2)), {"key": key.__dict__, "rows": len(TRAIN)})
    settings = {"embeddings": str(teacher), "teacher": str(teacher), "teacher_logits": str(tmp_path / "at128.npz")}
    with pytest.raises(AugmentError, match=re.escape("were computed at --max-length 128, this run uses 8")):
        augment(config(data=str(data_dir), output=str(tmp_path / "aug"), max_length=8, **settings))
    assert not (tmp_path / "aug").exists()


@pytest.mark.slow
def test_text_labels_of_three_classes_keep_their_names_and_need_a_teacher_of_them(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SST2DIST_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    names = {0: "bad", 1: "good"}
    rows = [(sentence, names[label] if i % 3 else "meh") for i, (sentence, label) in enumerate(TRAIN)]
    for split in ("train", "dev"):
        (data / f"{split}.tsv").write_text("text\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    settings = {"embeddings": str(tiny_model_dir), "min_words": 3, "variants": 2}
    with pytest.raises(ValueError, match="--teacher .* was trained on the labels \\(negative, positive\\)"):
        augment(config(data=str(data), output=str(tmp_path / "refused"), teacher=str(tiny_model_dir), **settings))
    teacher = make_tiny_model(tmp_path / "teacher", labels=("bad", "good", "meh"))
    output = tmp_path / "aug"
    augment(config(data=str(data), output=str(output), teacher=str(teacher), **settings))

    written = [line.split("\t")[1] for line in (output / "train.tsv").read_text().splitlines()[1:]]
    assert written[: len(rows)] == [y for _, y in rows] and set(written) == {"bad", "good", "meh"}
    logits, meta = load_logits(output / "teacher-logits.npz")
    assert logits.shape == (len(written), 3) and meta["labels"] == ["bad", "good", "meh"]


def test_reviews_spanning_lines_are_augmented_into_a_csv_folder(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A CSV of reviews with newlines (or tabs) in the text: GLUE TSV cannot hold them, so the folder is CSV, read
    back row for row."""
    import csv

    from sst2dist.data import load_sst2

    data, output = tmp_path / "data", tmp_path / "aug"
    data.mkdir()
    rows = [(f"{sentence}\nsecond\tline", label) for sentence, label in TRAIN]
    for split in ("train", "dev"):
        with (data / f"{split}.csv").open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([("sentence", "label"), *rows])
    augment(config(data=str(data), output=str(output), embeddings=str(tiny_model_dir), min_words=3, variants=2))
    assert sorted(path.name for path in output.iterdir()) == ["augment.json", "dev.csv", "train.csv"]
    original, augmented = load_sst2(str(data)), load_sst2(str(output))
    assert augmented["validation"]["sentence"] == original["validation"]["sentence"]
    assert augmented["train"]["sentence"][: len(rows)] == [sentence for sentence, _ in rows]
    assert augmented["train"]["label"][: len(rows)] == original["train"]["label"]
    assert len(augmented["train"]) > len(rows)  # new rows too
