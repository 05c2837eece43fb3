"""Sentence-level distillation (--distill-sentence, Patient-KD): the loss against a hand computation, the teacher's
sentence vectors against its own forward pass, their cache, and a real run of a BERT student from an MPNet teacher
(another tokenizer) whose projection is checkpointed and resumed exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHORT_RUN, make_tiny_model, make_tiny_mpnet, resume_copy
from conftest import run_train as train

from sst2dist.distill.loss import sentence_loss
from sst2dist.distill.scoring import TorchSentenceScorer
from sst2dist.distill.teacher import TeacherError, teacher_sentence_vectors

SENTENCES = ["a gripping , funny film", "dull", "the plot goes nowhere , slowly and without charm"]


def test_the_sentence_loss_is_two_minus_two_cosine_through_the_projection() -> None:
    projection = torch.nn.Linear(1, 2, bias=False)
    projection.weight.data = torch.tensor([[2.0], [1.0]])  # x -> (2x, x)
    student = torch.tensor([[1.0], [-1.0]])
    teacher = torch.tensor([[1.0, 0.0], [0.0, 3.0]])  # scale must not matter: only directions are compared
    # row 1: (2, 1) against (1, 0): cos 2/√5; row 2: (-2, -1) against (0, 1): cos -1/√5
    expected = ((2 - 2 * 2 / math.sqrt(5)) + (2 + 2 / math.sqrt(5))) / 2
    assert sentence_loss(student, teacher, projection).item() == pytest.approx(expected, rel=1e-6)
    assert sentence_loss(teacher, 5 * teacher).item() == pytest.approx(0.0, abs=1e-7)  # same width: no projection


def test_the_vectors_are_the_teachers_last_first_token_states(tmp_path: Path) -> None:
    teacher = make_tiny_mpnet(tmp_path / "mpnet", hidden_size=48)
    scorer = TorchSentenceScorer(teacher, 128, bf16=False)
    assert scorer.width == 48 and scorer.name == "torch-fp32-sentence"
    batched = scorer.batch(SENTENCES)  # padded together: the pads must not change a sentence's vector
    for row, sentence in enumerate(SENTENCES):
        alone = scorer.tokenizer([sentence], return_tensors="pt")
        with torch.inference_mode():
            states = scorer.model(**alone, output_hidden_states=True).hidden_states[-1][0, 0]
        np.testing.assert_allclose(batched[row], states.numpy(), atol=1e-5)


def test_the_vectors_are_cached_and_a_logits_file_is_refused(tmp_path: Path, accelerator) -> None:
    teacher = make_tiny_mpnet(tmp_path / "mpnet", hidden_size=48)
    cache = tmp_path / "cache"
    rows = {"sentence": SENTENCES, "label": [1, 0, 0]}
    vectors = teacher_sentence_vectors(str(teacher), rows, 128, accelerator, cache)
    assert vectors.shape == (3, 48) and vectors.dtype == np.float32
    (stored,) = cache.glob("sentences-*.npz")
    before = stored.stat().st_mtime_ns
    again = teacher_sentence_vectors(str(teacher), rows, 128, accelerator, cache)
    assert stored.stat().st_mtime_ns == before and np.array_equal(vectors, again)  # read back, not recomputed
    with pytest.raises(TeacherError, match="is not a model folder"):
        teacher_sentence_vectors(str(tmp_path / "logits.npz"), rows, 128, accelerator, cache)


# ------------------------------------------------------------------------------------------ a real run


def options(data: Path, student: Path, teacher: Path, out: Path, cache: Path) -> list[object]:
    run = ["--data", data, "--model", student, "--teacher", teacher, "--teacher-cache", cache, "--output-dir", out]
    return [*run, "--distill-sentence", 2.0, "--distill-alpha", 0.5, *SHORT_RUN]


@pytest.mark.slow
def test_a_student_of_another_tokenizer_matches_the_teachers_sentences_and_resumes_exactly(
    sst2_sample_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    teacher, cache = make_tiny_mpnet(tmp_path / "mpnet", seed=3, hidden_size=48), tmp_path / "cache"
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    result = train(*options(sst2_sample_dir, tiny_model_dir, teacher, straight, cache))
    assert result.returncode == 0, result.stderr[-3000:]

    logged = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    terms = [r for r in logged if "loss_sentence" in r]
    assert terms and all(0 < r["loss_sentence"] <= 4 for r in terms)  # squared distance of unit vectors
    assert all(
        r["loss"] == pytest.approx(0.5 * r["loss_ce"] + 0.5 * r["loss_kd"] + 2.0 * r["loss_sentence"], abs=1e-4)
        for r in terms
    )
    assert terms[-1]["loss_sentence"] < terms[0]["loss_sentence"]  # the student (and its projection) learn it
    assert len(list(cache.glob("sentences-*.npz"))) == 1
    last = sorted((straight / "checkpoints").glob("step-*"))[-1]
    assert load_file(last / "model_1.safetensors")["weight"].shape == (48, 32)  # the 32 -> 48 projection

    result = resume_copy(straight, resumed, 3, options(sst2_sample_dir, tiny_model_dir, teacher, resumed, cache))
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("model.safetensors", "model_1.safetensors"):
        a, b = load_file(last / name), load_file(resumed / "checkpoints" / last.name / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_the_command_line_needs_a_teacher_model_for_sentences(sst2_sample_dir: Path, tmp_path: Path) -> None:
    result = train("--distill-sentence", 1.0, "--output-dir", tmp_path / "run")
    assert result.returncode == 1 and "--layer-teacher MODEL_DIR" in result.stderr
    student = make_tiny_model(tmp_path / "student")
    result = train(
        "--data", sst2_sample_dir, "--model", student, "--distill-sentence", 1.0,
        "--layer-teacher", tmp_path / "missing", "--output-dir", tmp_path / "run", "--max-steps", 1,
    )  # fmt: skip
    assert result.returncode == 1 and "is not a model folder (no config.json)" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "run" / "model").exists()


def test_a_sentence_vectors_file_passed_as_teacher_logits_is_refused(tmp_path: Path, accelerator) -> None:
    from sst2dist.distill.teacher import teacher_logits

    teacher, cache = make_tiny_mpnet(tmp_path / "mpnet", hidden_size=48), tmp_path / "cache"
    labels = [1, 0, 0]
    teacher_sentence_vectors(str(teacher), {"sentence": SENTENCES, "label": labels}, 128, accelerator, cache)
    (vectors_file,) = cache.glob("sentences-*.npz")  # beside the logits in the cache: an easy file to mistake
    with pytest.raises(TeacherError, match="48 values per row, not 2 logits"):
        teacher_logits(str(vectors_file), SENTENCES, labels, 128, accelerator)
