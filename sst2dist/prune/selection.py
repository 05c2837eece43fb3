"""Which heads and neurons stay: the least important per FLOP go first (Fisher importance / unit cost), greedily,
until the encoder's FLOPs are at most the target fraction of the source's. A layer that loses every head (or
neuron) loses its whole attention block (or FFN)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sst2dist.prune.flops import UnitCosts

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Selection:
    heads: list[list[int]]  # per layer, the source head indices kept
    neurons: list[list[int]]  # per layer, the FFN neuron indices kept
    flops: int
    source_flops: int

    @property
    def cost(self) -> float:
        return self.flops / self.source_flops


def select_units(
    head_scores: torch.Tensor, neuron_scores: list[torch.Tensor], costs: UnitCosts, cost: float
) -> Selection:
    """Remove units in increasing importance per FLOP until FLOPs <= `cost` x the source's (ties: stable order)."""
    import torch

    layers, heads_per_layer = head_scores.shape
    widths = [len(scores) for scores in neuron_scores]
    source = costs.encoder([heads_per_layer] * layers, widths)
    unit_cost = torch.cat(
        [torch.full((head_scores.numel(),), costs.head, dtype=torch.float64)]
        + [torch.full((width,), costs.neuron, dtype=torch.float64) for width in widths]
    )
    per_flop = torch.cat([head_scores.flatten(), *neuron_scores]).double() / unit_cost
    order = torch.argsort(per_flop, stable=True)
    to_free = source - cost * source
    removed = 0 if to_free <= 0 else int(torch.searchsorted(torch.cumsum(unit_cost[order], 0), to_free)) + 1
    keep = torch.ones(len(order), dtype=torch.bool)
    keep[order[:removed]] = False
    head_keep, *neuron_keep = keep.split([head_scores.numel(), *widths])
    heads = [row.nonzero().flatten().tolist() for row in head_keep.view(layers, heads_per_layer)]
    neurons = [kept.nonzero().flatten().tolist() for kept in neuron_keep]
    flops = costs.encoder([len(h) for h in heads], [len(n) for n in neurons])
    return Selection(heads, neurons, flops, source)
