"""Where the prunable parts of each handled architecture live, relative to one encoder layer.

Both keep the attention heads' context in one tensor that a single linear layer projects back (BERT's
`attention.output.dense`, MPNet's `attention.attn.o`), and the FFN as `intermediate.dense` -> `output.dense`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel


class PruneError(ValueError):
    """A model, option or folder the prune stage cannot use; the message says what to do instead."""


@dataclass(frozen=True)
class Architecture:
    model_type: str
    attention_output: str  # the linear layer that reads every head's context
    attention_norm: str  # the LayerNorm after the attention block's residual sum
    shared_position_bias: bool  # one bias for all heads, computed once per forward (MPNet)

    def layers(self, model: PreTrainedModel) -> torch.nn.ModuleList:
        return model.base_model.encoder.layer

    @staticmethod
    def part(layer: torch.nn.Module, path: str) -> torch.nn.Module:
        return functools.reduce(getattr, path.split("."), layer)


ARCHITECTURES = {
    "bert": Architecture("bert", "attention.output.dense", "attention.output.LayerNorm", shared_position_bias=False),
    "mpnet": Architecture("mpnet", "attention.attn.o", "attention.LayerNorm", shared_position_bias=True),
}


def architecture_of(config: PretrainedConfig) -> Architecture:
    """The handled architecture of `config`, or a one-sentence refusal."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES or getattr(config, "is_decoder", False):
        raise PruneError(
            f"the prune stage handles BERT and MPNet encoders, not {model_type!r}: prune a fine-tuned BERT or MPNet "
            "model (e.g. the teacher), or use the model unpruned"
        )
    return ARCHITECTURES[model_type]


def head_size(config: PretrainedConfig) -> int:
    return config.hidden_size // config.num_attention_heads


def kept_heads(config: PretrainedConfig, layer: int) -> list[int]:
    """The source's head indices that layer `layer` still has (transformers' `config.pruned_heads` lists the
    removed ones)."""
    pruned = set((config.pruned_heads or {}).get(layer, ()))
    return [head for head in range(config.num_attention_heads) if head not in pruned]


def ffn_widths(config: PretrainedConfig) -> list[int]:
    """Each layer's FFN width: `intermediate_sizes` on a pruned model, else the one `intermediate_size`."""
    return list(getattr(config, "intermediate_sizes", None) or [config.intermediate_size] * config.num_hidden_layers)


def is_pruned(config: PretrainedConfig) -> bool:
    return bool(getattr(config, "intermediate_sizes", None) or config.pruned_heads)
