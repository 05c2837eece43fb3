"""The teacher in the loop, for intermediate-layer distillation: its hidden states and attention distributions on
the student's own batch, which only makes sense when both read the same tokens (`--distill-hidden`,
`--distill-attention`). Logit distillation needs none of this: its teacher logits are computed once (`teacher`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sst2dist.distill.loss import attention_loss, hidden_state_loss, uniform_layer_map
from sst2dist.distill.teacher import TeacherError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class LayerTeacher:
    """A frozen teacher, which of its states each student state matches, and the student->teacher width
    projection (trained with the student; None when the widths agree)."""

    model: torch.nn.Module
    layer_map: list[int]
    projection: torch.nn.Module | None
    hidden_weight: float
    attention_weight: float
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext  # the loop's mixed precision
    teacher_heads: list[list[int]] | None = None  # a pruned student's heads, as the teacher's head indices

    def outputs_wanted(self) -> dict[str, bool]:
        """What the student's forward must also return for these losses."""
        return {"output_hidden_states": self.hidden_weight > 0, "output_attentions": self.attention_weight > 0}

    def losses(self, student_outputs, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden-state loss, attention loss) of the student's outputs on `batch`; a term with weight 0 is 0."""
        import torch

        with torch.no_grad():
            teacher = self.model(**batch, **self.outputs_wanted())
        mask = batch["attention_mask"]
        zero = student_outputs.logits.new_zeros((), dtype=torch.float32)
        hidden = zero
        if self.hidden_weight > 0:
            hidden = hidden_state_loss(
                student_outputs.hidden_states, teacher.hidden_states, self.layer_map, mask, self.projection
            )
        attention = zero
        if self.attention_weight > 0:
            attention = attention_loss(
                student_outputs.attentions, teacher.attentions, self.layer_map, mask, self.teacher_heads
            )
        return hidden, attention


def load_layer_teacher(
    teacher_dir: str,
    student: PreTrainedModel,
    student_tokenizer: PreTrainedTokenizerBase,
    hidden_weight: float,
    attention_weight: float,
) -> LayerTeacher:
    """The teacher model for `--distill-hidden`/`--distill-attention`, refused when it cannot be matched layer
    for layer: another tokenizer (different tokens), or other head counts for attention transfer."""
    import torch

    from sst2dist.modeling import load_classifier_model, load_tokenizer, resolve_model

    if not Path(teacher_dir).is_dir():
        raise TeacherError(
            f"--distill-hidden/--distill-attention need the teacher model itself, and {teacher_dir} is not a model "
            "folder: pass --layer-teacher MODEL_DIR (a logits file has no hidden states)"
        )
    if load_tokenizer(teacher_dir).get_vocab() != student_tokenizer.get_vocab():
        raise TeacherError(
            f"the teacher {teacher_dir} reads other tokens than the student, so its layers cannot be matched token "
            "by token: use --distill-hidden 0 --distill-attention 0 (logits and --distill-sentence work across "
            "tokenizers), or cut the student from the teacher (--model TEACHER --init-layers ...)"
        )
    model = load_classifier_model(resolve_model(teacher_dir))  # its own labels: only its hidden states are read
    if attention_weight > 0:
        for network in (model, student):
            network.set_attn_implementation("eager")  # SDPA returns no attention probabilities
    student_config, teacher_config = student.config, model.config
    if attention_weight > 0 and student_config.num_attention_heads != teacher_config.num_attention_heads:
        raise TeacherError(
            f"--distill-attention matches heads one to one: the student has {student_config.num_attention_heads} "
            f"heads, the teacher {teacher_config.num_attention_heads}; use --distill-attention 0"
        )
    teacher_heads = pruned_head_map(student_config, teacher_config) if attention_weight > 0 else None
    model.eval().requires_grad_(False)
    widths = (student_config.hidden_size, teacher_config.hidden_size)
    projection = torch.nn.Linear(*widths) if widths[0] != widths[1] else None
    layer_map = uniform_layer_map(student_config.num_hidden_layers, teacher_config.num_hidden_layers)
    return LayerTeacher(model, layer_map, projection, hidden_weight, attention_weight, teacher_heads=teacher_heads)


def pruned_head_map(student_config, teacher_config) -> list[list[int]] | None:
    """For attention transfer from the unpruned source to a pruned student (`sst2dist prune`): each student
    layer's heads as the teacher's head indices (None when nothing is pruned). Layer j must be teacher layer j."""
    from sst2dist.pruned import kept_heads

    if teacher_config.pruned_heads:
        raise TeacherError("--distill-attention needs a teacher with all its heads: pass the unpruned model")
    if not student_config.pruned_heads:
        return None
    if student_config.num_hidden_layers != teacher_config.num_hidden_layers:
        raise TeacherError(
            "--distill-attention matches a pruned student's heads to its source's layer for layer: use the "
            "unpruned source as --layer-teacher and no --init-layers, or --distill-attention 0"
        )
    return [kept_heads(student_config, layer) for layer in range(student_config.num_hidden_layers)]
