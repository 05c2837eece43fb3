"""The bundle's manifest.json: what it records about the source model, the package versions and each variant's
file, and writing it."""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from sst2dist.engines import OPENVINO_VARIANTS, VARIANTS, unavailable_reason
from sst2dist.environment import acceleration_flags, package_versions
from sst2dist.runtime import MANIFEST_FILE, SUPPORT_FILES, VARIANT_FILES

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

VERSIONED_PACKAGES = (
    "torch",
    "transformers",
    "optimum",
    "optimum-onnx",
    "onnxruntime",
    "onnx",
    "tokenizers",
    "openvino",
)


def new_manifest(
    model_dir: Path,
    weights: list[Path],
    tokenizer: PreTrainedTokenizerBase,
    model: PreTrainedModel,
    opset: int,
    optimize: str,
    quantize: str,
) -> dict:
    return {
        "format": "sst2dist-bundle/1",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "task": "text-classification",
        "source": {
            "model_dir": str(model_dir.resolve()),
            "weights": [{"file": w.name, "sha256": sha256(w)} for w in weights],
        },
        "labels": [model.config.id2label[i] for i in range(model.config.num_labels)],
        "max_length": max_length(tokenizer, model),
        "pad_token": tokenizer.pad_token,
        "opset": opset,
        "optimize": optimize,
        "quantize": quantize,
        "versions": package_versions(VERSIONED_PACKAGES),
        "cpu": {"machine": platform.machine(), "flags": acceleration_flags()},
        "variants": {},
    }


def max_length(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> int:
    """Where transformers truncates (tokenizer_config's model_max_length), capped by the position table."""
    return int(min(tokenizer.model_max_length, model.config.max_position_embeddings))


def add_variant(manifest: dict, staging: Path, name: str) -> None:
    path = staging / VARIANT_FILES[name]
    manifest["variants"][name] = {
        "file": path.name,
        "sha256": sha256(path),
        "size_bytes": path.stat().st_size,
        "opset": onnx_opset(path),
        "engine": VARIANTS[name].engine,
        "precision": VARIANTS[name].precision,
        "passed": None,
    }


def add_openvino_variants(manifest: dict, staging: Path, mode: str) -> None:
    """openvino-f32, and openvino-bf16 where this CPU has bf16, both on model.onnx (`mode` auto or on; off adds
    none); manifest["engines"]["openvino"] says which were left out and why."""
    skipped = {}
    for name in OPENVINO_VARIANTS:
        why = "--openvino off" if mode == "off" else unavailable_reason(name)
        if why:
            skipped[name] = why
        else:
            add_variant(manifest, staging, name)
    manifest["engines"] = {"openvino": {"mode": mode, "skipped": skipped}}


def add_support_files(manifest: dict, staging: Path) -> None:
    """sha256 and size of the files every variant reads beside its model (config, tokenizer): the runtime refuses
    a bundle whose copy differs (`runtime.read_verified`)."""
    manifest["files"] = {
        name: {"sha256": sha256(staging / name), "size_bytes": (staging / name).stat().st_size}
        for name in SUPPORT_FILES
        if (staging / name).is_file()
    }


def onnx_opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
