"""What a student learns from a teacher: the logit loss (Hinton et al.) and, when both read the same tokens, the
intermediate-layer losses of TinyBERT (hidden states, MSE) and MiniLM (attention distributions, KL)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, alpha: float, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """α · CE(labels) + (1 − α) · T² · KL(softmax(teacher/T) ‖ softmax(student/T)); returns (loss, ce, kd).

    T² keeps the soft term's gradients on the scale of the hard term's as T grows (Hinton et al., 2015).
    """
    import torch.nn.functional as F

    student, teacher = student_logits.float(), teacher_logits.float()
    ce = F.cross_entropy(student, labels)
    log_student = F.log_softmax(student / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher / temperature, dim=-1)
    kd = F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * temperature**2
    return alpha * ce + (1 - alpha) * kd, ce, kd


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Student hidden state j (0 = embeddings, j = output of layer j) -> teacher hidden state j·N/M (TinyBERT's
    uniform mapping): a 6-layer student of a 12-layer teacher matches states 0, 2, 4, …, 12. A student deeper than
    its teacher shares teacher layers, and its layers never map to the embeddings (state 0, whose attention index
    would be −1: the teacher's last layer)."""
    return [0] + [max(1, round(j * teacher_layers / student_layers)) for j in range(1, student_layers + 1)]


def hidden_state_loss(
    student_hidden: Sequence[torch.Tensor],
    teacher_hidden: Sequence[torch.Tensor],
    layer_map: Sequence[int],
    attention_mask: torch.Tensor,
    projection: torch.nn.Module | None = None,
) -> torch.Tensor:
    """Mean over the mapped states of the MSE between the student's hidden states (through `projection` when it is
    narrower than the teacher: TinyBERT's learned W_h) and the teacher's, over real tokens only (pads excluded)."""
    import torch

    weights = attention_mask.unsqueeze(-1).float()
    per_state = []
    for student_index, teacher_index in enumerate(layer_map):
        student = student_hidden[student_index].float()
        if projection is not None:
            student = projection(student)
        teacher = teacher_hidden[teacher_index].float()
        squared = (student - teacher).pow(2) * weights
        per_state.append(squared.sum() / (weights.sum() * teacher.shape[-1]))
    return torch.stack(per_state).mean()


def attention_loss(
    student_attentions: Sequence[torch.Tensor],
    teacher_attentions: Sequence[torch.Tensor],
    layer_map: Sequence[int],
    attention_mask: torch.Tensor,
    teacher_heads: Sequence[Sequence[int]] | None = None,
) -> torch.Tensor:
    """Mean over the mapped layers, heads and real query tokens of KL(teacher ‖ student) between attention
    distributions (MiniLM's self-attention transfer). `layer_map` is the hidden-state map: student layer j − 1
    matches teacher layer map[j] − 1 (the layer whose output is that state). A pruned student's head k of layer j
    matches the teacher's head `teacher_heads[j][k]`; a layer with no heads left (attentions None) is skipped."""
    import torch

    queries = attention_mask[:, None, :].float()  # (batch, 1, query)
    per_layer = [attention_mask.new_zeros((), dtype=torch.float32)]  # a student with no heads at all: 0
    for student_index, teacher_index in enumerate(layer_map[1:]):
        if student_attentions[student_index] is None:
            continue
        student = student_attentions[student_index].float().clamp_min(1e-12)
        teacher = teacher_attentions[teacher_index - 1].float().clamp_min(1e-12)
        if teacher_heads is not None:
            teacher = teacher[:, list(teacher_heads[student_index])]
        kl = (teacher * (teacher.log() - student.log())).sum(-1)  # (batch, heads, query)
        per_layer.append((kl * queries).sum() / (queries.sum() * kl.shape[1]))
    return torch.stack(per_layer[1:] or per_layer).mean()


def sentence_loss(
    student_vectors: torch.Tensor, teacher_vectors: torch.Tensor, projection: torch.nn.Module | None = None
) -> torch.Tensor:
    """Patient-KD's representation loss at the sentence level: the mean over the batch of the squared distance
    between the L2-normalised student vector (through `projection` when narrower than the teacher's) and the
    L2-normalised teacher vector, i.e. 2 − 2·cos. Normalising lets a student of any width and scale match."""
    import torch.nn.functional as F

    student = student_vectors.float()
    if projection is not None:
        student = projection(student)
    student, teacher = F.normalize(student, dim=-1), F.normalize(teacher_vectors.float(), dim=-1)
    return (student - teacher).pow(2).sum(-1).mean()
