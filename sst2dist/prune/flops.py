"""What the encoder's heads and FFN neurons cost: multiply-add FLOPs (2 per multiply-accumulate) of its matrix
products for one sequence of `length` tokens, as `torch.utils.flop_counter` counts them. LayerNorms, softmax,
biases and the embeddings are left out: they do not change with pruning, or barely."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sst2dist.pruned import head_size


@dataclass(frozen=True)
class UnitCosts:
    head: int  # one attention head: its q, k, v and output projections, its scores and context
    neuron: int  # one FFN neuron: a row of the first FFN matrix and a column of the second

    @classmethod
    def of(cls, config, length: int) -> UnitCosts:
        hidden, width = config.hidden_size, head_size(config)
        per_token_head = 4 * 2 * hidden * width + 2 * 2 * length * width
        return cls(head=length * per_token_head, neuron=length * 2 * 2 * hidden)

    def encoder(self, heads: Sequence[int], neurons: Sequence[int]) -> int:
        """The encoder's FLOPs with `heads[l]` heads and `neurons[l]` FFN neurons in layer l."""
        return self.head * sum(heads) + self.neuron * sum(neurons)
