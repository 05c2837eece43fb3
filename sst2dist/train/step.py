"""One optimizer step: the losses of a batch (`forward_losses`), backward, clipping the global gradient norm
over everything the optimizer steps, the optimizer and the LR schedule (not advanced over a step that fp16's
overflow guard skipped)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sst2dist.train.log import LOSS_TERMS

if TYPE_CHECKING:
    import torch

    from sst2dist.train.config import TrainConfig
    from sst2dist.train.state import Run, Teachers


def make_optimizer(
    modules: list[torch.nn.Module], config: TrainConfig, grad_scaling: bool = False
) -> torch.optim.Optimizer:
    """AdamW over the model (and a layer-distillation projection); matrices decay, biases and LayerNorm weights
    (all 1-D) do not. Fused, except under fp16's GradScaler (`grad_scaling`): a fused AdamW takes the scaler's
    step itself, so Accelerate never sees a skipped step and the LR schedule would advance over it."""
    import torch

    params = [p for module in modules for p in module.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, fused=not grad_scaling)


def stepped_parameters(run: Run) -> list[torch.nn.Parameter]:
    """Everything the optimizer steps, the model's parameters first (so Accelerate still recognises the model's
    own list under FSDP when there is no projection): --max-grad-norm bounds the global norm of all of them."""
    teachers = run.teachers
    projections = [] if teachers is None else [teachers.sentence_projection]
    projections += [teachers.layer_teacher.projection] if teachers and teachers.layer_teacher else []
    extra = [p for module in projections if module is not None for p in module.parameters() if p.requires_grad]
    return [*run.model.parameters(), *extra]


def window_size(index_in_epoch: int, batches_per_epoch: int, grad_accum: int) -> int:
    """How many micro-batches the accumulation window of this one holds: --grad-accum, except the epoch's last
    window, which Accelerate closes early at the end of the loader."""
    start = index_in_epoch - index_in_epoch % grad_accum
    return min(grad_accum, batches_per_epoch - start)


def train_step(run: Run, batch: dict, index_in_epoch: int) -> torch.Tensor:
    """One micro-batch: forward and backward; when the gradients sync, clip, step and advance the schedule."""
    accelerator, model, grad_accum = run.accelerator, run.model, run.config.grad_accum
    with accelerator.accumulate(model):
        losses = forward_losses(run.model, run.config, batch, run.teachers)
        # Accelerate divides by --grad-accum; a short last window of r batches is the mean of r, not r/grad_accum.
        window = window_size(index_in_epoch, len(run.train_loader), grad_accum)
        accelerator.backward(losses[0] * (grad_accum / window) if window < grad_accum else losses[0])
        if accelerator.sync_gradients and run.config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(stepped_parameters(run), run.config.max_grad_norm)
        run.optimizer.step()
        if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:  # fp16 overflow
            run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
    return losses


def forward_losses(
    model: torch.nn.Module, config: TrainConfig, batch: dict, teachers: Teachers | None = None
) -> torch.Tensor:
    """The `LOSS_TERMS`: [loss, cross-entropy, logit distillation, hidden states, attention, sentence]; without a
    teacher the loss is the cross-entropy alone, and each state term adds its --distill-hidden/-attention/-sentence
    weight."""
    import torch
    import torch.nn.functional as F

    from sst2dist.distill.loss import distillation_loss, sentence_loss

    layer_teacher = teachers.layer_teacher if teachers else None
    teacher_logits = batch.pop("teacher_logits", None)
    teacher_sentence = batch.pop("teacher_sentence", None)
    if teacher_logits is None and layer_teacher is None and teacher_sentence is None:
        loss = model(**batch).loss
        return torch.stack([loss, loss.detach(), *torch.zeros_like(loss).expand(len(LOSS_TERMS) - 2)])
    labels = batch.pop("labels")
    wanted = layer_teacher.outputs_wanted() if layer_teacher else {}
    if teacher_sentence is not None:
        wanted["output_hidden_states"] = True
    outputs = model(**batch, **wanted)
    if teacher_logits is None:
        loss = ce = F.cross_entropy(outputs.logits.float(), labels)
        kd = torch.zeros_like(ce)
    else:
        loss, ce, kd = distillation_loss(
            outputs.logits, teacher_logits, labels, config.distill_alpha, config.distill_temperature
        )
    hidden = attention = sentence = torch.zeros_like(ce)
    if layer_teacher is not None:
        with layer_teacher.autocast():
            hidden, attention = layer_teacher.losses(outputs, batch)
        loss = loss + config.distill_hidden * hidden + config.distill_attention * attention
    if teacher_sentence is not None:
        sentence = sentence_loss(outputs.hidden_states[-1][:, 0], teacher_sentence, teachers.sentence_projection)
        loss = loss + config.distill_sentence * sentence
    return torch.stack([loss, ce, kd, hidden, attention, sentence])
