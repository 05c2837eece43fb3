"""Export a fine-tuned sequence classifier to a verified ONNX deploy bundle.

    model folder ──► model.onnx (Optimum main_export) ──► model_optimized.onnx (ORTOptimizer)
                          └──► model_quantized.onnx (dynamic int8) [+ model_static_quantized.onnx]
                          └──► openvino_int8.xml + .bin (NNCF int8, where OpenVINO and NNCF are installed)
    every variant ──► verified against PyTorch on real validation sentences ──► the ones that passed timed on this CPU
                  ──► manifest.json (with the timings and the CPU fingerprint) ──► README.md (model card)
                  ──► rename into place

Optimum's own export check runs on dummy inputs and only warns; this gate runs the bundle through the
runtime `Classifier` (the code that will serve it) on the validation set and refuses a bad variant.

This module checks the input and runs the stages in order; `gate` (the verification gate),
`int8` (the int8 variants), `manifest` (manifest.json) and `variant_choice` (timing the variants
that passed, for the default) hold the stages themselves.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sst2dist.atomic import replace_dir, writing
from sst2dist.export.card import write_card
from sst2dist.export.gate import ExportError, check_gate, check_label_names, described_verify_set, verify_bundle
from sst2dist.export.int8 import CALIBRATION_SAMPLES, onnx_input_names, quantize_dynamic_int8, quantize_static_int8
from sst2dist.export.int8_hold import HoldCheck, prepare_hold_check
from sst2dist.export.manifest import add_openvino_variants, add_support_files, add_variant, new_manifest, write_manifest
from sst2dist.export.openvino_int8 import add_openvino_int8
from sst2dist.export.options import ExportOptions
from sst2dist.runtime import MANIFEST_FILE, VARIANT_FILES, Classifier
from sst2dist.variant_choice import batch_invariance, choose_variant, record_timings, workload_for

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def export_bundle(
    model_dir: str | Path, output_dir: str | Path, options: ExportOptions | None = None, **fields: Any
) -> dict:
    """Write a verified bundle to `output_dir` and return its manifest.

    The bundle is built in a hidden temporary folder beside `output_dir` and renamed into place only when
    every variant passed the gate (int8 may be kept as failed with `keep_failed`), so a failed or
    interrupted export leaves nothing behind and an existing bundle is replaced only with `force`. `options` (or
    `ExportOptions` fields as keywords: `opset=17`, `quantize="static"`, ...) are checked first (OptionError).
    """
    from sst2dist.data import DEFAULT_DATA, load_sst2, split_labels, take_first

    options = replace(options, **fields) if options else ExportOptions(**fields)
    model_dir, output_dir = Path(model_dir).expanduser(), Path(output_dir).expanduser()
    weights = check_model_dir(model_dir)
    check_output_dir(output_dir, options.force)
    model, tokenizer = load_source(model_dir)
    data = options.data or DEFAULT_DATA
    splits = load_sst2(data, columns=options.columns, labels=options.label_order)
    data_labels = split_labels(splits["validation"]).names
    check_label_names([model.config.id2label[i] for i in range(model.config.num_labels)], data_labels)
    validation = take_first(splits["validation"], options.max_verify_samples)
    verify_set = described_verify_set(data, len(validation), len(splits["validation"]))

    new_parents = [p for p in (output_dir.parent, *output_dir.parent.parents) if not p.exists()]
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=output_dir.parent))
    try:
        with writing("the bundle", output_dir):  # a full disk: one sentence, the earlier bundle untouched
            staging.chmod(0o755)  # mkdtemp's 0700 would make the published bundle private
            manifest = new_manifest(
                model_dir, weights, tokenizer, model, options.opset, options.optimize, options.quantize
            )
            hold = build_variants(staging, model, manifest, options, splits["train"], tokenizer)
            add_openvino_variants(manifest, staging, options.openvino)
            add_openvino_int8(manifest, staging, options, splits["train"], tokenizer, hold)
            limits = {"max_accuracy_drop": options.max_accuracy_drop}
            limits |= {"min_label_agreement": options.min_label_agreement, "data_labels": data_labels}
            manifest["verification"] = verify_bundle(
                staging, model, tokenizer, validation, manifest, verify_set, **limits
            )
            check_gate(manifest, options.keep_failed)
            time_gated_variants(staging, manifest, validation)
            write_manifest(staging, manifest)
            write_card(staging, manifest, model_dir, output_dir.name)  # README.md: outside the manifest's hashes
            replace_dir(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in new_parents:  # deepest first: leave no empty folders behind either
            parent.rmdir()
        raise
    return manifest


# --- checks before anything is written ---


def check_model_dir(model_dir: Path) -> list[Path]:
    """The folder's weight files, after checking it holds a sequence classifier."""
    if not model_dir.is_dir():
        raise ExportError(f"model folder {model_dir} does not exist: pass the folder `sst2dist train` wrote")
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise ExportError(f"{model_dir} has no config.json: it is not a saved model folder")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"{config_file} is unreadable ({err}): save the model again") from err
    architectures = config.get("architectures") or []
    if not any(name.endswith("ForSequenceClassification") for name in architectures):
        found = ", ".join(architectures) or "no architecture"
        raise ExportError(
            f"{model_dir} holds {found}, not a sequence classifier: export a fine-tuned "
            "*ForSequenceClassification folder (the `model/` folder `sst2dist train` writes)"
        )
    weights = sorted(p for pattern in ("model*.safetensors", "pytorch_model*.bin") for p in model_dir.glob(pattern))
    if not weights:
        raise ExportError(f"{model_dir} has no weights ({' or '.join(WEIGHT_FILES)}): save the model again")
    if not (model_dir / "tokenizer.json").is_file():
        raise ExportError(f"{model_dir} has no tokenizer.json: save the fast tokenizer beside the model")
    return weights


def check_output_dir(output_dir: Path, force: bool) -> None:
    if output_dir.is_file():
        raise ExportError(f"--output {output_dir} is a file: give a folder path for the bundle")
    if not output_dir.is_dir() or not any(output_dir.iterdir()):
        return
    if not (output_dir / MANIFEST_FILE).is_file():
        raise ExportError(
            f"--output {output_dir} is a non-empty folder that is not a bundle: choose a new or empty folder"
        )
    if not force:
        raise ExportError(f"a bundle already exists at {output_dir}: pass --force to replace it")


def load_source(model_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model as every stage loads it (a pruned folder with its pruned shapes), and its tokenizer."""
    from transformers import AutoTokenizer

    from sst2dist.modeling import load_classifier_model

    try:
        model = load_classifier_model(model_dir).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir, use_fast=True)
    except Exception as err:  # safetensors/torch/transformers raise many types for damaged files
        raise ExportError(
            f"could not load the model in {model_dir} ({err.__class__.__name__}: {err}): "
            "its weights or tokenizer are unreadable; save the model again"
        ) from err
    return model, tokenizer


# --- building the variants ---


def build_variants(
    staging: Path,
    model: PreTrainedModel,
    manifest: dict,
    options: ExportOptions,
    train: Dataset,
    tokenizer: PreTrainedTokenizerBase,
) -> HoldCheck | str | None:
    """The onnxruntime variants; returns the int8 hold check (None without int8), which openvino-int8 reuses."""
    hold = None
    export_fp32(model, tokenizer, staging, manifest["opset"])
    add_variant(manifest, staging, "fp32")
    if options.optimize != "none":
        optimize_graph(staging, options.optimize)
        add_variant(manifest, staging, "optimized")
        manifest["optimization"] = fusion_report(staging / VARIANT_FILES["optimized"])
    if options.quantize != "none":
        hold = int8_hold_check(staging, manifest, options, train, tokenizer)
        manifest["quantization"] = quantize_dynamic_int8(staging, hold)
        add_variant(manifest, staging, "int8")
    if options.quantize == "static":
        manifest["static_quantization"] = quantize_static_int8(staging, train, tokenizer, hold)
        add_variant(manifest, staging, "static-int8")
    with_labels(staging, manifest["labels"])
    add_support_files(manifest, staging)  # after with_labels: config.json is final
    return hold


def int8_hold_check(
    staging: Path, manifest: dict, options: ExportOptions, train: Dataset, tokenizer: PreTrainedTokenizerBase
) -> HoldCheck | str:
    """The train sentences both int8 variants are held to, with the fp32 graph's logits on them (or why not)."""
    fp32_path = staging / VARIANT_FILES["fp32"]
    gate_limits = (options.max_accuracy_drop, options.min_label_agreement)
    hold = prepare_hold_check(
        train, tokenizer, onnx_input_names(fp32_path), manifest["labels"], CALIBRATION_SAMPLES, gate_limits
    )
    if not isinstance(hold, str):
        hold.set_reference(fp32_path)
    return hold


def export_fp32(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, staging: Path, opset: int) -> None:
    """model.onnx with dynamic batch and sequence axes, plus config.json and the tokenizer files. Optimum exports
    the model `load_source` loaded, so a pruned model keeps its pruned shapes."""
    from optimum.exporters.onnx import onnx_export_from_model

    if model.config.pad_token_id is None:  # Optimum's text-classification export needs one
        model.config.pad_token_id = tokenizer.pad_token_id
    try:
        onnx_export_from_model(
            model,
            staging,
            opset=opset,
            task="text-classification",  # explicit: no hub look-up to infer it
            device="cpu",
            do_validation=False,  # verify_bundle does a stricter check on real sentences
            preprocessors=[tokenizer],
        )
    except OSError:
        raise  # a full disk or no permission, not the model: export_bundle's `writing` names it
    except Exception as err:  # Optimum raises ValueError, KeyError, RuntimeError... for unsupported models
        raise ExportError(
            f"Optimum could not export {model.name_or_path} to ONNX ({err.__class__.__name__}: {err}); "
            "sst2dist supports BERT-family sequence classifiers"
        ) from err
    if not (staging / VARIANT_FILES["fp32"]).is_file():
        raise ExportError(f"Optimum wrote no {VARIANT_FILES['fp32']} for {model.name_or_path}")


def optimize_graph(staging: Path, level: str) -> None:
    """model_optimized.onnx: ORTOptimizer's fused attention, GELU and LayerNorm (O2), for CPU."""
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig

    optimizer = ORTOptimizer.from_pretrained(staging, file_names=[VARIANT_FILES["fp32"]])
    config = AutoOptimizationConfig.with_optimization_level(level, for_gpu=False)
    optimizer.optimize(config, save_dir=staging, file_suffix="optimized")


FUSED_OPERATORS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "EmbedLayerNormalization")
FUSED_OPERATORS += ("BiasGelu", "FastGelu", "Gelu", "LayerNormalization")


def fusion_report(path: Path) -> dict:
    """Which fused operators the optimizer produced. ORTOptimizer runs BERT's fusion patterns on any BERT-family
    graph; where a model's graph does not match them (MPNet's relative-position attention), fewer fuse, and the
    manifest says so rather than the export failing."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    counts = {op: sum(n.op_type == op for n in graph.node) for op in FUSED_OPERATORS}
    fused = {op: count for op, count in counts.items() if count}
    missing = [op for op in ("Attention", "SkipLayerNormalization") if op not in fused]
    note = f"not fused for this model type: {', '.join(missing)}" if missing else None
    return {"fused_operators": fused, "note": note}


def time_gated_variants(staging: Path, manifest: dict, validation: Dataset) -> None:
    """Record, for each variant that passed the gate, whether its scores move with the batch and how fast it runs
    here (with this CPU's fingerprint and load), then the variant serve, predict and predict-ray run by default on
    this CPU: manifest["default_variants"], and serve's as manifest["default_variant"] (what the card states)."""
    write_manifest(staging, manifest)  # the Classifier reads it
    passed = [name for name, entry in manifest["variants"].items() if entry["passed"]]

    def load(name: str, threads: int | None = None) -> Classifier:
        return Classifier(staging, variant=name, threads=threads)

    for name in passed:
        manifest["variants"][name]["batch_invariance"] = batch_invariance(load(name), validation["sentence"])
    manifest["variant_timings"] = record_timings(load, passed, validation["sentence"])
    manifest["default_variants"] = {
        command: default_choice(manifest, load, threads, batch_size)
        for command, (threads, batch_size) in command_defaults().items()
    }
    manifest["default_variant"] = manifest["default_variants"]["serve"]["variant"]


def command_defaults() -> dict[str, tuple[int | None, int]]:
    """(threads per session, batch size) each command runs with by default."""
    from sst2dist.predict.options import PredictOptions
    from sst2dist.predict.ray_options import RayPredictOptions
    from sst2dist.serve.limits import ServeLimits, default_threads, default_workers

    return {
        "serve": (default_threads(default_workers()), ServeLimits.max_batch_size),
        "predict": (PredictOptions.threads, PredictOptions.batch_size),
        "predict-ray": (RayPredictOptions.threads_per_actor, RayPredictOptions.batch_size),
    }


def default_choice(manifest: dict, load, threads: int | None, batch_size: int) -> dict:
    """What `load_classifier` (serve, predict, predict-ray) chooses here at `threads` and `batch_size`: the same
    function with the same arguments, so what the export records is what those commands run on this CPU."""
    choice, _ = choose_variant(
        manifest,
        threads,
        batch_invariant=True,
        load=lambda name: load(name, threads),
        workload=workload_for(batch_size),
    )
    logger.info("default at %s thread(s), batch %d: %s", threads or "all", batch_size, choice.line())
    return {
        "variant": choice.variant,
        "threads": choice.threads,
        "batch_size": batch_size,
        "reason": choice.reason,
        "detail": choice.detail,
    }


def with_labels(staging: Path, labels: list[str]) -> None:
    """Make sure config.json names the labels (a model saved without them would say LABEL_0, LABEL_1)."""
    config_file = staging / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["id2label"] = {str(i): label for i, label in enumerate(labels)}
    config["label2id"] = {label: i for i, label in enumerate(labels)}
    config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
