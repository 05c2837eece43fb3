"""The pruned-model format, which every stage reads: where the prunable parts of each handled architecture live
(BERT, MPNet), removing heads and FFN neurons from a model, and giving a saved pruned model its shapes back on load
(`modeling.load_classifier_model` calls `load_pruned`). The prune stage (`sst2dist/prune/`) decides what to remove.

Both architectures keep the attention heads' context in one tensor that a single linear layer projects back (BERT's
`attention.output.dense`, MPNet's `attention.attn.o`), and the FFN as `intermediate.dense` -> `output.dense`.

A pruned folder is a standard BERT/MPNet folder plus two config fields:
- `pruned_heads` (transformers' own): the removed heads per layer. `from_pretrained` applies it on BERT;
- `intermediate_sizes` (ours): each layer's FFN width, since a standard config has one `intermediate_size`.
`load_pruned` builds the model from its config (heads pruned by transformers), narrows each FFN to its width,
adds the forward fixes below and loads the weights strictly, so any shape that disagrees fails loudly.

Forward fixes, installed on the modules (nothing in the state dict):
- MPNet computes its relative-position bias once for all heads and shares it, so a layer that lost heads would
  fail with a size mismatch: a forward pre-hook slices the bias to the layer's kept heads.
- A layer with no heads left (or no FFN neurons) would run zero-width matrix products, which ONNX exporters and
  runtimes handle badly: its attention block (or FFN) becomes what it computes then, LayerNorm(x + output bias).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
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


WEIGHTS_FILE = "model.safetensors"


def prune_model(model: PreTrainedModel, heads: Sequence[Sequence[int]], neurons: Sequence[Sequence[int]]) -> None:
    """Keep only `heads[l]` (source head indices) and `neurons[l]` (FFN neuron indices) of each layer l."""
    config = model.config
    architecture = architecture_of(config)
    removed = {
        layer: sorted(set(range(config.num_attention_heads)) - set(keep))
        for layer, keep in enumerate(heads)
        if len(keep) < config.num_attention_heads
    }
    model.prune_heads(removed)
    for layer, keep in zip(architecture.layers(model), neurons, strict=True):
        narrow_ffn(layer, keep)
    config.intermediate_sizes = [len(keep) for keep in neurons]
    install_forward_fixes(model, architecture)


def narrow_ffn(layer: torch.nn.Module, keep: Sequence[int]) -> None:
    import torch
    from transformers.pytorch_utils import prune_linear_layer

    if len(keep) == layer.intermediate.dense.out_features:
        return
    index = torch.tensor(sorted(keep), dtype=torch.long)
    layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, index, dim=0)
    layer.output.dense = prune_linear_layer(layer.output.dense, index, dim=1)


def install_forward_fixes(model: PreTrainedModel, architecture: Architecture) -> None:
    import torch

    config = model.config
    for index, layer in enumerate(architecture.layers(model)):
        heads = kept_heads(config, index)
        if not heads:
            output, norm = (
                architecture.part(layer, architecture.attention_output),
                architecture.part(layer, architecture.attention_norm),
            )
            layer.attention.forward = functools.partial(attention_without_heads, output, norm)
        elif architecture.shared_position_bias and len(heads) < config.num_attention_heads:
            layer.attention.register_buffer("kept_heads", torch.tensor(heads), persistent=False)
            layer.attention.register_forward_pre_hook(slice_position_bias, with_kwargs=True)
        if layer.intermediate.dense.out_features == 0:
            layer.intermediate.forward = skip_intermediate
            layer.output.forward = functools.partial(ffn_without_neurons, layer.output.dense, layer.output.LayerNorm)
    drop_empty_parameters(model)


def drop_empty_parameters(model: PreTrainedModel) -> None:
    """An emptied block's zero-size matrices become non-persistent buffers: nothing to learn (DDP wants a gradient
    for every parameter) and nothing to save (all zero-size tensors share one null storage, and Accelerate's
    checkpoints keep one tensor per storage, so a resume would miss the others)."""
    for module in model.modules():
        for name, parameter in list(module.named_parameters(recurse=False)):
            if parameter.numel() == 0:
                del module._parameters[name]
                module.register_buffer(name, parameter.detach(), persistent=False)


def slice_position_bias(attention: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """MPNetLayer passes the shared (batch, all heads, query, key) bias as `position_bias=`."""
    bias = kwargs.get("position_bias")
    if bias is not None:
        kwargs["position_bias"] = bias.index_select(1, attention.kept_heads)
    return args, kwargs


def attention_without_heads(
    output: torch.nn.Linear, norm: torch.nn.LayerNorm, hidden_states: torch.Tensor, *args, **kwargs
) -> tuple:
    """An attention block with every head removed adds only its output projection's bias before the LayerNorm
    (in training, without the dropout transformers would apply to that constant); its attentions are None."""
    result = norm(hidden_states + output.bias)
    return (result, None) if kwargs.get("output_attentions") else (result,)


def skip_intermediate(hidden_states: torch.Tensor) -> torch.Tensor:
    return hidden_states  # read by nothing: `ffn_without_neurons` ignores it


def ffn_without_neurons(
    output: torch.nn.Linear, norm: torch.nn.LayerNorm, hidden_states: torch.Tensor, input_tensor: torch.Tensor
) -> torch.Tensor:
    return norm(input_tensor + output.bias)


def load_pruned(source: str | Path, config: PretrainedConfig) -> PreTrainedModel:
    """A pruned folder as a model in eval mode: shapes from its config, then its weights, strictly."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    architecture = architecture_of(config)
    weights = Path(source) / WEIGHTS_FILE
    if not weights.is_file():
        raise PruneError(f"{source} is a pruned model without {WEIGHTS_FILE}: save it again with save_pretrained")
    model = AutoModelForSequenceClassification.from_config(config)  # applies config.pruned_heads
    for layer, width in zip(architecture.layers(model), ffn_widths(config), strict=True):
        narrow_ffn(layer, range(width))
    install_forward_fixes(model, architecture)
    expected = model.state_dict()
    # Folders saved before `drop_empty_parameters` hold the zero-size tensors too: nothing to load from them.
    state = {name: tensor for name, tensor in load_file(weights).items() if tensor.numel() or name in expected}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise PruneError(f"{weights} does not fit the pruned shapes its config.json describes ({err})") from err
    return model.eval()


def keep_pruned_layers(config: PretrainedConfig, layers: Sequence[int]) -> None:
    """`--init-layers` on a pruned model: its per-layer fields follow the kept layers (call before cutting)."""
    widths = ffn_widths(config)
    config.intermediate_sizes = [widths[i] for i in layers]
    pruned = config.pruned_heads or {}
    config.pruned_heads = {new: sorted(pruned[old]) for new, old in enumerate(layers) if pruned.get(old)}
