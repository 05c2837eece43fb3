"""The bundle's README.md: a Hugging Face model card built with `huggingface_hub`'s `ModelCard` / `ModelCardData`.

Its metadata carries the license, the base model, the dataset (SST-2, or the user's: its hub id or folder name),
`pipeline_tag: text-classification`, `library_name: onnx` and a `model-index` with the dev accuracy of every gated
variant (and its macro-F1 with more than 2 labels); its text says what the model
is for, what it is not for, each variant's latency as timed at export (with the CPU) and how to serve or predict.
The base model and teacher come from the run's `train_config.json` beside the model folder, when there is one. The
manifest's hashes do not cover the card, so editing it never breaks the bundle.
"""

from __future__ import annotations

import json
from pathlib import Path

from sst2dist.labels import SST2_NAMES, data_name, is_sst2_data
from sst2dist.variant_choice import batch_dependent

CARD_FILE = "README.md"
LICENSE = "apache-2.0"  # sst2dist's, and that of both packaged base models (MiniLM-L6 and MPNet)
DATASET = "stanfordnlp/sst2"
# The packaged models, by the Hub id they were published under (their card's `base_model`).
HUB_IDS = {
    "packaged:all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    "packaged:all-mpnet-base-v2": "sentence-transformers/all-mpnet-base-v2",
}


def train_config(model_dir: Path) -> dict:
    """The run's train_config.json beside `model_dir` (train's output folder), or {} for a folder from elsewhere."""
    path = Path(model_dir).resolve().parent / "train_config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def base_model(model_dir: Path, depth: int = 3) -> str | None:
    """The Hub id the model was fine-tuned from: `--model` of its run, followed through local folders that were
    themselves trained here (an L3 student cut from an L6 student names the L6's base)."""
    name = train_config(model_dir).get("model")
    if not name:
        return None
    if Path(name).is_dir() and depth > 0:
        return base_model(Path(name), depth - 1) or None
    return HUB_IDS.get(name, name)


def is_sst2(verification: dict) -> bool:
    """Whether the gate scored SST-2 (`is_sst2_data`; a manifest from before label sets were recorded did)."""
    return is_sst2_data(verification.get("data"), verification.get("labels", SST2_NAMES))


def dataset_id(verification: dict) -> str:
    """The card's dataset: SST-2's hub id for SST-2's labels, else the user's --data (a local folder by its name)."""
    return DATASET if is_sst2(verification) else data_name(verification.get("data"), verification.get("labels"))


def verify_set_name(verification: dict) -> str:
    """The sentences the gate ran, e.g. "SST-2 validation: the first 64 of 872 sentences of dev.tsv"."""
    samples, total, file = verification.get("samples"), verification.get("split_size"), verification.get("file")
    dataset = data_name(verification.get("data"), verification.get("labels"))
    if samples is None:
        return f"{dataset} validation"
    share = f"all {samples}" if samples == total else f"the first {samples} of {total or '?'}"
    return f"{dataset} validation: {share} sentences" + (f" of {file}" if file else "")


def eval_results(manifest: dict) -> list:
    """Per gated variant, its accuracy (and macro-F1 with more than 2 labels) on the validation sentences the
    export gate ran, named as read: the --data value (hub id or local folder), the split and how many sentences."""
    from huggingface_hub import EvalResult

    verification = manifest.get("verification", {})
    metrics = ("accuracy", "macro_f1")
    task = "Sentiment classification" if is_sst2(verification) else "Text classification"
    return [
        EvalResult(
            task_type="text-classification",
            task_name=task,
            dataset_type=verification.get("data") or DATASET,
            dataset_name=verify_set_name(verification),
            dataset_split=verification.get("split", "validation"),
            metric_type="f1" if metric == "macro_f1" else metric,
            metric_name=f"{metric.replace('_', '-')} ({name})",
            metric_value=round(entry["verification"][metric], 6),
            **({"metric_args": {"average": "macro"}} if metric == "macro_f1" else {}),
        )
        for name, entry in manifest["variants"].items()
        if entry.get("passed")
        for metric in metrics
        if metric in entry["verification"]
    ]


def card_data(manifest: dict, model_dir: Path, name: str):
    from huggingface_hub import ModelCardData

    config = train_config(model_dir)
    verification = manifest.get("verification", {})
    tags = ["onnx", "sst2dist", "sentiment-analysis" if is_sst2(verification) else "text-classification"]
    tags += ["distillation"] if config.get("teacher") else []
    return ModelCardData(
        model_name=name,
        language="en",
        license=LICENSE,
        base_model=base_model(model_dir),
        datasets=[dataset_id(verification)],
        pipeline_tag="text-classification",
        library_name="onnx",
        tags=tags,
        eval_results=eval_results(manifest),
    )


def variant_table(manifest: dict) -> str:
    """Markdown: per variant, the gate's result, accuracy, size and the ms per sentence timed at export."""
    timings = manifest.get("variant_timings") or {}
    single = timings.get("ms_per_sentence", {})
    batched = timings.get("batch_ms_per_sentence", {})
    threads = sorted(single, key=int)
    f1 = any("macro_f1" in entry.get("verification", {}) for entry in manifest["variants"].values())
    head = ["variant", "gate", "dev accuracy"] + ["dev macro-F1"] * f1 + ["size"]
    head += [f"batch 1, {n} thread(s)" for n in threads] + [f"sorted batches, {n} thread(s)" for n in sorted(batched)]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, entry in manifest["variants"].items():
        verification = entry.get("verification", {})
        scores = [verification.get("accuracy")] + [verification.get("macro_f1")] * f1
        cells = [f"`{variant}`", "passed" if entry.get("passed") else "failed"]
        cells += [f"{100 * score:.2f} %" if score is not None else "" for score in scores]
        cells += [f"{entry['size_bytes'] / 1e6:.1f} MB"]
        cells += [_ms(single[n].get(variant)) for n in threads] + [
            _ms(batched[n].get(variant)) for n in sorted(batched)
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _ms(value: float | None) -> str:
    return f"{value:.3g} ms" if value is not None else "not timed"


def timing_note(manifest: dict) -> str:
    timings = manifest.get("variant_timings")
    if not timings:
        return "No variant was timed at export."
    cpu = timings.get("cpu", {})
    flags = ", ".join(cpu.get("flags", [])) or "none of the flags that pick kernels"
    return (
        f"Milliseconds per sentence, timed at export on {cpu.get('model', 'an unnamed CPU')} "
        f"(`{cpu.get('kind', '?')}`; {flags}): over {timings.get('sentences', '?')} validation sentences "
        f"at batch 1 and over {timings.get('throughput_sentences', '?')} in length-sorted batches of "
        f"{timings.get('throughput_batch_size', '?')} ({timings.get('statistic', 'median')}). Another CPU gives other "
        "numbers: the runtime re-times the variants there before choosing one."
    )


def int8_note(manifest: dict) -> str:
    """The int8 recipe in two sentences: what it quantizes, and what the hold check on train sentences did."""
    held = {
        name: manifest[key].get("hold_check")
        for name, key in (("int8", "quantization"), ("static-int8", "static_quantization"))
        if manifest.get(key)
    }
    if not held:
        return ""
    pools = [check["sentences"] for check in held.values() if check and "sentences" in check]
    outcomes = "; ".join(f"`{name}` {hold_outcome(check)}" for name, check in held.items())
    recipe = (
        "\n\nint8 recipe: per-channel int8 weights, attention's activation × activation MatMuls in fp32, FFN "
        "down-projections int8 weight-only; "
    )
    if not pools:
        return f"{recipe}the onnxruntime int8 hold check on held-out train sentences did not run: {outcomes}."
    return (
        f"{recipe}each onnxruntime int8 variant was then held to fp32 on the {pools[0]['checked']} least-sure of "
        f"{pools[0]['pool']} held-out train sentences (never the validation split), each figure moved one standard "
        f"error (√flips) against int8 before it is compared with its limit: {outcomes}."
    )


def hold_outcome(check: dict | None) -> str:
    if not check or "skipped" in check:
        return f"was not held ({(check or {}).get('skipped', 'no record')})"
    after = check["after"]
    figures = f"{100 * after['label_agreement']:.2f} % agreement, {after['accuracy_drop_points']:.2f} points drop"
    if check.get("reverted"):
        return (
            f"did not hold with up to {check['cap']} weight MatMuls kept fp32 ({figures} as quantized), so it is "
            "quantized as is and the gate decided"
        )
    if not check["kept_fp32"]:
        return f"held as quantized ({figures})"
    kept = [entry["node"] for entry in check["kept_fp32"]]
    names = ", ".join(f"`{name}`" for name in kept[:3]) + (f" and {len(kept) - 3} more" if len(kept) > 3 else "")
    verdict = "then held" if after["passed"] else "still short of the hold limits, so the gate decided"
    before = 100 * check["before"]["label_agreement"]
    plural = "s" if len(kept) > 1 else ""
    return (
        f"kept {len(kept)} weight MatMul{plural} in fp32, the most sensitive as measured ({names}): "
        f"{before:.2f} % agreement before, {figures} after, {verdict}"
    )


def selection_note(config: dict, verification: dict) -> str:
    """Whether the split these figures come from also picked the checkpoint: `sst2dist train` keeps the
    evaluation that scored best on its --data's validation split."""
    if not config:
        return (
            "The run that trained this model is unknown: if it chose its checkpoint on this split, these figures "
            "are optimistic."
        )
    same = config.get("data") == verification.get("data")
    where = "the same validation split" if same else f"the validation split of `{config.get('data')}`"
    return (
        f"`sst2dist train` kept the checkpoint that scored best on {where}, so that split also picked the model: "
        "accuracy on it is optimistic, and unseen data of the same kind will likely score a little lower."
    )


def card_text(manifest: dict, model_dir: Path, name: str) -> str:
    config, verification = train_config(model_dir), manifest.get("verification", {})
    labels = " / ".join(f"`{label}`" for label in manifest["labels"])
    kind = "An English sentiment classifier" if is_sst2(verification) else "A text classifier"
    teacher = config.get("teacher")
    distilled = f"\nDistilled from the teacher `{teacher}` (its logits, `--teacher`).\n" if teacher else ""
    trained = f"from `{config['model']}` on `{config.get('data')}`" if config.get("model") else "(run unknown)"
    return f"""
# {name}

{kind} ({labels}) fine-tuned {trained} with sst2dist, exported to ONNX and verified
against PyTorch before this bundle was written. It runs on a CPU with onnxruntime alone (no torch).
{distilled}
## Variants

Accuracy on {verify_set_name(verification)} (`{verification.get("data", "?")}`);
PyTorch scored {pytorch_scores(verification)} on them.
{selection_note(config, verification)} The default is
`{manifest.get("default_variant", "?")}`: what `sst2dist serve` runs on the exporting CPU with its defaults (the
fastest gated variant whose scores did not move with the batch there).

{variant_table(manifest)}

{timing_note(manifest)}{int8_note(manifest)}

## Use

```bash
pip install sst2dist   # onnxruntime, tokenizers, numpy: no torch
sst2dist serve {name} --port 8080   # HTTP: POST /predict, POST / (Inference API), /metrics
sst2dist predict {name} "a gripping, funny film"
# Ray Data, on one box or a cluster (pip install "sst2dist[ray]"):
sst2dist predict-ray {name} --input reviews.parquet --output predictions.parquet
```

```python
from sst2dist.runtime import Classifier

Classifier("{name}").predict(["a gripping, funny film"])  # [{{"label": "{manifest["labels"][-1]}", "score": ...}}]
```

## Intended use and limitations

{limitations(manifest, verification)}{batch_note(manifest)}

`manifest.json` holds the hashes, the package versions, the verification per batch size and the raw timings.
"""


def batch_note(manifest: dict) -> str:
    """The gated variants whose scores moved with their batch mates as the export measured (what serve and
    predict go by), or nothing when none did."""
    moved = [
        name for name, entry in manifest["variants"].items() if entry.get("passed") and batch_dependent(manifest, name)
    ]
    if not moved:
        return ""
    names = ", ".join(f"`{name}`" for name in moved)
    return (
        f"\n- The scores of {names} moved with their batch mates when measured at export; `serve` and `predict` "
        "run such a variant only when asked by name, or when nothing else passed the gate."
    )


def pytorch_scores(verification: dict) -> str:
    accuracy = f"{100 * verification.get('pytorch_accuracy', float('nan')):.2f} %"
    f1 = verification.get("pytorch_macro_f1")
    return accuracy if f1 is None else f"{accuracy} accuracy and {100 * f1:.2f} % macro-F1"


def limitations(manifest: dict, verification: dict) -> str:
    max_length = manifest.get("max_length", "?")
    if is_sst2(verification):
        return f"""- Intended for the polarity of short English texts such as movie-review sentences: what SST-2 holds.
- Two labels only: neutral or mixed texts are forced to one side, and the score is not a calibrated probability
  outside SST-2's domain. Texts are cut at {max_length} tokens.
- Accuracy was measured on SST-2's validation split only; measure it on your own data before relying on it, and
  do not use it alone for decisions about people."""
    dataset = dataset_id(verification)
    return f"""- Intended for texts like those of `{dataset}`, the data it was trained and verified on.
- {len(manifest["labels"])} labels only: a text that fits none of them is forced into one, and the score is not a
  calibrated probability outside that data's domain. Texts are cut at {max_length} tokens.
- Accuracy was measured on `{dataset}`'s validation split only; measure it on other data before relying on it,
  and do not use it alone for decisions about people."""


def write_card(bundle_dir: Path, manifest: dict, model_dir: Path, name: str) -> None:
    """Write `bundle_dir`/README.md from the finished manifest."""
    from huggingface_hub import ModelCard

    data = card_data(manifest, model_dir, name)
    ModelCard(f"---\n{data.to_yaml()}\n---\n{card_text(manifest, model_dir, name)}").save(bundle_dir / CARD_FILE)
