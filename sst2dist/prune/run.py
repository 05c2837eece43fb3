"""`sst2dist prune`: measure the importance of every head and FFN neuron on training sentences, remove the least
important per FLOP down to the target cost, and write the pruned model folder (with its tokenizer and prune.json)
atomically."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sst2dist.atomic import replace_dir, write_json_atomic, writing
from sst2dist.labels import LabelMappingError, LabelSet, check_scorable, column_to_data_id
from sst2dist.prune.flops import UnitCosts
from sst2dist.prune.masks import fisher_importance
from sst2dist.prune.options import PruneOptions
from sst2dist.prune.selection import Selection, select_units
from sst2dist.pruned import PruneError, architecture_of, is_pruned, prune_model

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

SUMMARY_FILE = "prune.json"


def prune(model_dir: str, output: str | Path, options: PruneOptions) -> dict:
    """Prune `model_dir` to `options.cost` of its encoder FLOPs into `output`; returns what prune.json says."""
    from sst2dist.data import DEFAULT_DATA, load_sst2, split_labels

    output = Path(output).expanduser()
    check_output(output, Path(model_dir), options.force)
    config = check_source(model_dir)
    train = load_sst2(options.data or DEFAULT_DATA, columns=options.columns, labels=options.label_order)["train"]
    model, tokenizer = load_source(model_dir, config, split_labels(train))
    sentences, data_ids = sample(train, options.samples, options.seed)
    labels = model_label_ids(model, split_labels(train), data_ids)
    lengths = [len(ids) for ids in tokenizer(sentences, truncation=True, max_length=options.max_length)["input_ids"]]
    head_scores, neuron_scores = fisher_importance(model, batches(tokenizer, sentences, labels, options))
    length = round(sum(lengths) / len(lengths))
    selection = select_units(head_scores, neuron_scores, UnitCosts.of(model.config, length), options.cost)
    prune_model(model, selection.heads, selection.neurons)
    summary = describe(model_dir, selection, options, length, len(sentences))
    save(model, tokenizer, summary, output)
    return summary


def check_source(model_dir: str) -> PretrainedConfig:
    """A fine-tuned, unpruned classifier of an architecture the stage handles. A base encoder is refused: importance
    is measured through the classification head, and a new, random one would rank the units by noise."""
    from transformers import AutoConfig

    from sst2dist.modeling import is_classifier, resolve_model

    try:
        config = AutoConfig.from_pretrained(resolve_model(model_dir))
    except OSError as err:
        raise PruneError(f"could not read the model config in {model_dir} ({err}): pass a saved model folder") from err
    architecture_of(config)
    if not is_classifier(config):
        found = ", ".join(getattr(config, "architectures", None) or []) or "no classification head"
        raise PruneError(
            f"{model_dir} holds {found}, not a fine-tuned classifier: importance is measured through the "
            "classification head, so fine-tune it first (`sst2dist.train --model ...`) and prune the model/ it writes"
        )
    if is_pruned(config):
        raise PruneError(f"{model_dir} is already pruned: prune its unpruned source to the lower --cost instead")
    return config


def load_source(
    model_dir: str, config: PretrainedConfig, data_labels: LabelSet
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A fine-tuned classifier with its own labels (its config's id2label), which must name the data's labels as the
    export gate checks them, and its tokenizer."""
    from sst2dist.modeling import load_classifier_model, load_tokenizer, resolve_model

    try:
        check_scorable(LabelSet.from_config(config).names, data_labels.names)
    except LabelMappingError as err:
        raise PruneError(str(err)) from err
    try:
        return load_classifier_model(resolve_model(model_dir)), load_tokenizer(model_dir)
    except ValueError:  # PruneError, ModelNotFoundError: already one sentence
        raise
    except Exception as err:  # safetensors/torch/transformers/tokenizers raise many types for damaged files
        raise PruneError(
            f"could not load the model in {model_dir} ({err.__class__.__name__}: {err}): its weights or tokenizer "
            "are unreadable; save the model again"
        ) from err


def model_label_ids(model: PreTrainedModel, data_labels: LabelSet, data_ids: Sequence[int]) -> list[int]:
    """The data's label ids as the model's output columns (matched by name: the model may order them otherwise)."""
    import numpy as np

    columns = np.argsort(column_to_data_id(LabelSet.from_config(model.config).names, data_labels.names))
    return columns[np.asarray(data_ids, dtype=np.int64)].tolist()


def check_output(output: Path, source: Path, force: bool) -> None:
    if output.is_file():
        raise PruneError(f"--output {output} is a file: give a folder path for the pruned model")
    source = source.expanduser().resolve()
    if output.exists() and output.resolve() == source:
        raise PruneError(f"--output {output} is the source model folder: write the pruned model to a new folder")
    if output.exists() and output.resolve() in source.parents:  # --force would delete the source with it
        raise PruneError(f"--output {output} holds the source model {source}: write the pruned model to a new folder")
    if not output.is_dir() or not any(output.iterdir()):
        return
    if not (output / SUMMARY_FILE).is_file():  # --force replaces a pruned model, never a folder of something else
        raise PruneError(
            f"--output {output} is a non-empty folder that is not a pruned model: choose a new or empty folder"
        )
    if not force:
        raise PruneError(f"a pruned model already exists at {output}: pass --force to replace it")


def sample(train, count: int, seed: int) -> tuple[list[str], list[int]]:
    """`count` training rows, a seeded random sample (all of them when there are fewer)."""
    rows = train.shuffle(seed=seed).select(range(min(count, len(train))))
    return list(rows["sentence"]), list(rows["label"])


def batches(
    tokenizer: PreTrainedTokenizerBase, sentences: Sequence[str], labels: Sequence[int], options: PruneOptions
) -> Iterator[dict[str, torch.Tensor]]:
    import torch
    from tqdm.auto import tqdm

    starts = range(0, len(sentences), options.batch_size)
    for start in tqdm(starts, desc="importance", unit="batch", leave=False):
        batch = tokenizer(
            list(sentences[start : start + options.batch_size]),
            truncation=True,
            max_length=options.max_length,
            padding=True,
            return_tensors="pt",
        )
        yield {**batch, "labels": torch.tensor(labels[start : start + options.batch_size])}


def describe(model_dir: str, selection: Selection, options: PruneOptions, length: int, samples: int) -> dict:
    """What prune.json says: the sentences measured (fewer than --samples when the data has fewer), not those asked."""
    return {
        "source": str(model_dir),
        "cost_target": options.cost,
        "cost": selection.cost,
        "encoder_flops": selection.flops,
        "source_encoder_flops": selection.source_flops,
        "flops_length": length,
        "heads_kept": [len(heads) for heads in selection.heads],
        "neurons_kept": [len(neurons) for neurons in selection.neurons],
        "samples": samples,
        "data": options.data,
        "seed": options.seed,
    }


def save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, summary: dict, output: Path) -> None:
    """Written to a hidden folder beside `output` and renamed into place: an interrupted run leaves nothing."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        with writing("the pruned model", output):
            staging.chmod(0o755)
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            write_json_atomic(staging / SUMMARY_FILE, summary, "prune.json")
            replace_dir(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
