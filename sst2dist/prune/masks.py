"""Importance of heads and FFN neurons: the Fisher information of a mask variable on each (Michel et al. 2019;
Kwon et al. 2022). Every head's context and every neuron's activation is multiplied by a mask variable equal to 1;
a unit's importance is the sum over training batches of the squared gradient of the batch's loss with respect to
its mask: how much the loss would move if the unit were scaled, to second order, where it is removed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from sst2dist.pruned import architecture_of, ffn_widths, head_size

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


def unit_masks(model: PreTrainedModel, fill: float = 1.0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(heads: (layers, heads), neurons: one (width,) per layer), all `fill`, in the model's dtype."""
    import torch

    config = model.config
    dtype = next(model.parameters()).dtype
    heads = torch.full((config.num_hidden_layers, config.num_attention_heads), fill, dtype=dtype)
    neurons = [torch.full((width,), fill, dtype=dtype) for width in ffn_widths(config)]
    return heads, neurons


@contextlib.contextmanager
def masked(model: PreTrainedModel, heads: torch.Tensor, neurons: list[torch.Tensor]) -> Iterator[None]:
    """Run `model` with head h of layer l scaled by heads[l, h] and FFN neuron n by neurons[l][n]: forward
    pre-hooks on the linear layers that read them (the attention output projection, the second FFN matrix)."""
    architecture = architecture_of(model.config)
    width = head_size(model.config)
    handles = []
    for index, layer in enumerate(architecture.layers(model)):
        head_scale = heads[index].repeat_interleave(width)
        attention_output = architecture.part(layer, architecture.attention_output)
        handles.append(attention_output.register_forward_pre_hook(scaling(head_scale)))
        handles.append(layer.output.dense.register_forward_pre_hook(scaling(neurons[index])))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def scaling(scale: torch.Tensor):
    def hook(module: torch.nn.Module, args: tuple) -> tuple:
        return (args[0] * scale.to(args[0].device), *args[1:])

    return hook


def fisher_importance(
    model: PreTrainedModel, batches: Iterable[dict[str, torch.Tensor]]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Σ over `batches` of (∂ loss / ∂ mask)² for every head mask and neuron mask; batches carry `labels`."""
    import torch

    model.eval()
    frozen = [p for p in model.parameters() if p.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(False)  # only the masks need gradients
    heads, neurons = unit_masks(model)
    masks = [heads.requires_grad_(), *(m.requires_grad_() for m in neurons)]
    totals = [torch.zeros_like(mask) for mask in masks]
    try:
        with masked(model, heads, neurons):
            for batch in batches:
                loss = model(**batch).loss
                for total, grad in zip(totals, torch.autograd.grad(loss, masks), strict=True):
                    total += grad.detach() ** 2
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)
    return totals[0], totals[1:]
