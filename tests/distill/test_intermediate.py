"""Intermediate-layer distillation (--distill-hidden, --distill-attention): the losses against a hand computation,
the layer map, the refusals, and a real training run whose width projection is checkpointed and resumed exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import SHORT_RUN, make_tiny_model, make_tiny_mpnet, resume_copy
from conftest import run_train as train

from sst2dist.distill.intermediate import load_layer_teacher
from sst2dist.distill.loss import attention_loss, hidden_state_loss, uniform_layer_map
from sst2dist.distill.teacher import TeacherError
from sst2dist.modeling import load_classifier_model, load_model, load_tokenizer


def test_the_uniform_map_pairs_every_kth_teacher_state() -> None:
    assert uniform_layer_map(6, 12) == [0, 2, 4, 6, 8, 10, 12]
    assert uniform_layer_map(3, 12) == [0, 4, 8, 12]
    assert uniform_layer_map(2, 2) == [0, 1, 2]


def test_the_hidden_state_loss_is_the_masked_mse_through_the_projection() -> None:
    student = [torch.tensor([[[1.0], [2.0], [9.0]]]), torch.tensor([[[0.0], [1.0], [9.0]]])]  # (1, 3 tokens, 1)
    teacher = [torch.tensor([[[1.0, 0.0], [0.0, 0.0], [5.0, 5.0]]])] * 3  # (1, 3 tokens, 2): width 2
    projection = torch.nn.Linear(1, 2, bias=False)
    projection.weight.data = torch.tensor([[2.0], [1.0]])  # x -> (2x, x)
    mask = torch.tensor([[1, 1, 0]])  # the third token is padding: its 9s must not count
    # state 0: tokens (2,1) vs (1,0) -> 1+1; (4,2) vs (0,0) -> 16+4. Sum 22 over 2 tokens x 2 dims = 5.5
    # state 1: (0,0) vs (1,0) -> 1; (2,1) vs (0,0) -> 5. Sum 6 / 4 = 1.5. Mean of the mapped states: 3.5
    loss = hidden_state_loss(student, teacher, [0, 2], mask, projection)
    assert loss.item() == pytest.approx(3.5)


def test_the_attention_loss_is_kl_teacher_to_student_over_real_queries() -> None:
    teacher_probs = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    student_probs = torch.tensor([[0.25, 0.75], [0.1, 0.9]])
    teacher = [torch.full((1, 1, 2, 2), 0.5), teacher_probs.reshape(1, 1, 2, 2)]  # layers 0 and 1: (b, h, q, k)
    student = [student_probs.reshape(1, 1, 2, 2)]
    mask = torch.tensor([[1, 0]])  # only query 0 is a real token
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    # the student's layer 0 produces state 1; map [0, 2] pairs it with teacher state 2 = the output of teacher layer 1
    assert attention_loss(student, teacher, [0, 2], mask).item() == pytest.approx(expected, rel=1e-5)


def test_another_tokenizer_is_refused_in_one_sentence(tiny_model_dir: Path, tmp_path: Path) -> None:
    teacher = make_tiny_mpnet(tmp_path / "mpnet")  # same words, other special tokens: another token space
    student = load_model(str(tiny_model_dir))
    with pytest.raises(TeacherError, match="reads other tokens than the student"):
        load_layer_teacher(str(teacher), student, load_tokenizer(str(tiny_model_dir)), 1.0, 0.0)


def test_a_logits_file_or_other_head_counts_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    student, tokenizer = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    with pytest.raises(TeacherError, match="not a model folder"):
        load_layer_teacher(str(tmp_path / "logits.npz"), student, tokenizer, 1.0, 0.0)
    four_heads = make_tiny_model(tmp_path / "wide", hidden_size=64, heads=4)
    with pytest.raises(TeacherError, match="student has 2 heads, the teacher 4"):
        load_layer_teacher(str(four_heads), student, tokenizer, 0.0, 1.0)
    hidden_only = load_layer_teacher(str(four_heads), student, tokenizer, 1.0, 0.0)  # widths differ: projected
    assert hidden_only.projection is not None and hidden_only.projection.weight.shape == (64, 32)


def test_a_layer_teacher_of_three_text_labels_serves_a_student_of_the_same_labels(tmp_path: Path) -> None:
    labels = ("neg", "neu", "pos")  # a user's own 3-class teacher: only its hidden states are read
    teacher = make_tiny_model(tmp_path / "teacher", labels=labels)
    student = load_classifier_model(make_tiny_model(tmp_path / "student", seed=1, labels=labels))
    layers = load_layer_teacher(str(teacher), student, load_tokenizer(str(teacher)), 1.0, 0.0)
    assert layers.model.config.id2label == dict(enumerate(labels)) and layers.projection is None


# ------------------------------------------------------------------------------------------ a real run


def options(data: Path, student: Path, teacher: Path, out: Path) -> list[object]:
    run = ["--data", data, "--model", student, "--layer-teacher", teacher, "--output-dir", out]
    return [*run, "--distill-hidden", 1.0, "--distill-attention", 0.5, *SHORT_RUN]


@pytest.mark.slow
def test_a_run_logs_each_term_and_resumes_its_projection_exactly(
    sst2_sample_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    teacher = make_tiny_model(tmp_path / "teacher", seed=3, hidden_size=64, layers=4, heads=2)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    result = train(*options(sst2_sample_dir, tiny_model_dir, teacher, straight))
    assert result.returncode == 0, result.stderr[-3000:]

    logged = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    terms = [r for r in logged if "loss_hidden" in r]
    assert terms and all(r["loss_hidden"] > 0 and r["loss_attention"] > 0 for r in terms)
    assert all(
        r["loss"] == pytest.approx(r["loss_ce"] + r["loss_hidden"] + 0.5 * r["loss_attention"], abs=1e-4) for r in terms
    )
    last = sorted((straight / "checkpoints").glob("step-*"))[-1]
    assert (last / "model_1.safetensors").is_file()  # the 32 -> 64 projection is trained and checkpointed

    result = resume_copy(straight, resumed, 3, options(sst2_sample_dir, tiny_model_dir, teacher, resumed))
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("model.safetensors", "model_1.safetensors"):
        a, b = load_file(last / name), load_file(resumed / "checkpoints" / last.name / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_the_command_line_needs_a_layer_teacher(tmp_path: Path) -> None:
    result = train("--distill-hidden", 1.0, "--output-dir", tmp_path / "run")
    assert result.returncode == 1 and "--layer-teacher MODEL_DIR" in result.stderr


def test_the_layer_map_pairs_real_layers_whatever_the_depths() -> None:
    """A student deeper than its teacher (12 over 6) shares teacher layers; no student layer is paired with
    hidden state 0 (the embeddings), whose attention index would be -1, the teacher's last layer."""
    from sst2dist.distill.loss import uniform_layer_map

    for student in range(1, 13):
        for teacher in range(1, 13):
            layer_map = uniform_layer_map(student, teacher)
            assert layer_map[0] == 0 and layer_map[-1] == teacher and len(layer_map) == student + 1
            assert all(1 <= index <= teacher for index in layer_map[1:])
            assert layer_map == sorted(layer_map)
    assert uniform_layer_map(6, 12) == [0, 2, 4, 6, 8, 10, 12]  # TinyBERT's uniform map is unchanged
