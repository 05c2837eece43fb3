"""Anchors for the menu: untrained models of the stock SST-2 shapes, built from transformers configs (no weights,
no network), exported like a real bundle and timed in the same run as the user's bundles, then plotted at their
published SST-2 accuracy (published, not measured here). They show, on this CPU, the stock model of each latency
class that a menu entry has to beat.

    sst2dist bench --menu L6=export/l6 --menu L3=export/l3 --anchors --data ../shared/data/sst2

Each anchor is exported like a bundle with every variant (optimized, dynamic and static int8, OpenVINO where
installed) and timed through each variant the menu's bundles have, so anchors and bundles meet like for like.
A published accuracy is a full-precision figure: the exact variants (fp32, optimized, openvino-f32, which the gate
holds to PyTorch's logits) carry it; the lossy ones (int8, static-int8, openvino-bf16) have no published figure and
are timed only. Built anchor bundles are cached in `$SST2DIST_CACHE/anchors`, else in `<output>/anchors`, keyed by
shape, the export options, the int8 recipe's code and the versions and CPU flags that shape the exported graphs,
so a rerun reuses them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from sst2dist.bench.measure import BenchError
from sst2dist.environment import acceleration_flags, package_versions
from sst2dist.labels import SST2_NAMES, LabelSet
from sst2dist.packaged import CACHE_ENV

PUBLISHED_NOTE = "published, not measured here"
VOCAB_SIZE = 30522  # the uncased BERT WordPiece vocabulary every stock shape here uses
SEED = 0
VERIFY_SAMPLES = 16  # the export gate only proves the graphs run: an untrained model has no accuracy to keep
KEY_PACKAGES = ("transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "openvino", "nncf", "torch")
# How anchors are exported: every variant a bundle can have (OpenVINO where installed).
ANCHOR_EXPORT = {"optimize": "O2", "quantize": "static", "openvino": "auto"}
# The code of the int8 recipes (onnxruntime and NNCF): a change to either is a new recipe, so a new cache key.
RECIPE_FILES = tuple(
    Path(__file__).resolve().parents[1] / "export" / name for name in ("int8.py", "int8_hold.py", "openvino_int8.py")
)
EXACT_VARIANTS = ("fp32", "optimized", "openvino-f32")  # the gate holds these to PyTorch's logits


@dataclass(frozen=True)
class Anchor:
    """A stock shape and its published SST-2 accuracy."""

    name: str  # the menu name, e.g. "BERT-base"
    architecture: str  # "bert" or "distilbert": the transformers config that builds it
    layers: int
    hidden: int
    heads: int
    ffn: int  # intermediate (feed-forward) width
    accuracy: float  # published SST-2 accuracy (full precision), %
    source: str  # who published it, and where
    split: str = "dev"  # the split it was published on: "dev" (GLUE validation, what the menu measures) or "test"

    @property
    def shape(self) -> str:
        return f"{self.layers}x{self.hidden}"


# The published numbers, in one place. Dev is the GLUE SST-2 validation set (872 sentences) that the menu measures;
# a test figure is labelled as such wherever it is shown. None is an int8 figure: none was published.
STOCK_ANCHORS: tuple[Anchor, ...] = (
    Anchor(
        "BERT-base",
        "bert",
        12,
        768,
        12,
        3072,
        92.7,
        "Sanh et al. 2019 (DistilBERT paper, Table 1), GLUE dev; Devlin et al. 2019 report 93.5 on test",
    ),  # fmt: skip
    Anchor("DistilBERT", "distilbert", 6, 768, 12, 3072, 91.3, "Sanh et al. 2019, Table 1, GLUE dev"),
    Anchor("MiniLM-L12-H384", "bert", 12, 384, 12, 1536, 93.0, "Wang et al. 2020, dev"),
    Anchor("MiniLM-L6-H384", "bert", 6, 384, 12, 1536, 91.5, "Wang et al. 2020, dev (the L6 figure of issue 17)"),
    Anchor("BERT-small", "bert", 4, 512, 8, 2048, 89.7, "Turc et al. 2019, GLUE test", split="test"),
)


def published_accuracy(anchor: Anchor, variant: str) -> float | None:
    """The anchor's published accuracy as a fraction for an exact variant; None for a lossy one (never published)."""
    return anchor.accuracy / 100 if variant in EXACT_VARIANTS else None


def check_anchor_table(anchors: Sequence[Anchor], menu_names: Sequence[str]) -> None:
    """Names unique and distinct from the menu's, architectures known. Raises BenchError."""
    names = [anchor.name for anchor in anchors]
    if not names:
        raise BenchError("--anchors has no anchor shapes to build")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise BenchError(f"the anchor table names {twice[0]!r} twice: give every anchor its own name")
    clashes = sorted({name.lower() for name in names} & {name.lower() for name in menu_names})
    if clashes:
        raise BenchError(f"--menu name {clashes[0]!r} is also an anchor's name: rename that menu entry")
    unknown = [a.name for a in anchors if a.architecture not in ("bert", "distilbert")]
    if unknown:
        raise BenchError(f"anchor {unknown[0]} has an unknown architecture: use bert or distilbert")
    splits = [a.name for a in anchors if a.split not in ("dev", "test")]
    if splits:
        raise BenchError(f"anchor {splits[0]} names an unknown split: use dev or test")


def cache_root(output: str) -> Path:
    """$SST2DIST_CACHE/anchors when set, else <output>/anchors."""
    base = os.environ.get(CACHE_ENV)
    return (Path(base).expanduser() if base else Path(output)) / "anchors"


def anchor_key(anchor: Anchor, recipe_files: Sequence[Path] = RECIPE_FILES, labels: Sequence[str] = SST2_NAMES) -> str:
    """What decides the exported graphs: the shape, the seed, the export options, the int8 recipe's code, the
    exporter's versions, the CPU's int8 flags and the labels (other than SST-2's: the head's width). The published
    accuracy is not part of it."""
    shape = {k: v for k, v in asdict(anchor).items() if k not in ("name", "accuracy", "source", "split")}
    recipe = {"shape": shape, "vocab": VOCAB_SIZE, "seed": SEED, "packages": package_versions(KEY_PACKAGES)}
    recipe |= {"machine": platform.machine(), "flags": acceleration_flags(), "export": ANCHOR_EXPORT}
    recipe["int8_recipe"] = [hashlib.sha256(Path(file).read_bytes()).hexdigest() for file in recipe_files]
    if tuple(labels) != SST2_NAMES:  # SST-2's keep the keys of the anchors built before labels were
        recipe["labels"] = list(labels)
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def anchor_folder(anchor: Anchor, root: Path, labels: Sequence[str] = SST2_NAMES) -> Path:
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in anchor.name)
    return root / f"{slug}-{anchor_key(anchor, labels=labels)}"


def is_built(folder: Path) -> bool:
    """export_bundle renames a bundle into place only once complete, so a manifest means a whole bundle."""
    return (folder / "manifest.json").is_file()


def check_buildable(anchors: Sequence[Anchor], root: Path, labels: Sequence[str] = SST2_NAMES) -> None:
    """Anchors not cached yet need the train extra to build. Raises BenchError before any work starts."""
    missing = [a.name for a in anchors if not is_built(anchor_folder(a, root, labels))]
    stack = ("torch", "transformers", "optimum")
    if missing and not all(importable(name) for name in stack):
        raise BenchError(
            f"--anchors builds {', '.join(missing)} with torch, transformers and Optimum, which are not installed: "
            "pip install 'sst2dist[train]', or drop --anchors"
        )


def importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def anchor_bundles(
    anchors: Sequence[Anchor],
    root: Path,
    data: str,
    say: Callable[[str], None] = lambda _: None,
    label_names: Sequence[str] = SST2_NAMES,
    **reading: str | None,
) -> dict[str, Path]:
    """Every anchor's bundle folder, built now when it is not cached: a classifier of `label_names`, verified
    on `data` read as `reading` says (export-onnx's text_column, label_column and labels)."""
    bundles = {}
    for anchor in anchors:
        folder = anchor_folder(anchor, root, label_names)
        if not is_built(folder):
            say(f"building anchor {anchor.name} ({anchor.shape}, untrained) in {folder}")
            build_anchor(anchor, folder, data, label_names, **reading)
        bundles[anchor.name] = folder
    return bundles


def build_anchor(
    anchor: Anchor, bundle: Path, data: str, label_names: Sequence[str] = SST2_NAMES, **reading: str | None
) -> None:
    """An untrained model of the anchor's shape, saved with the uncased WordPiece tokenizer, then exported like a
    real bundle with every variant (the same int8 recipes, OpenVINO where installed), the gate run on a few
    sentences."""
    from sst2dist.export.bundle import export_bundle

    root = bundle.parent
    root.mkdir(parents=True, exist_ok=True)
    ignore = root / ".gitignore"
    if not ignore.exists():  # a cache of large files inside a results folder: never committed by accident
        ignore.write_text("*\n", encoding="utf-8")
    work = Path(tempfile.mkdtemp(prefix=f".{bundle.name}.", dir=root))
    try:
        model_dir = save_untrained(anchor, work / "model", label_names)
        export_bundle(
            model_dir,
            bundle,
            data=data,
            **reading,
            **ANCHOR_EXPORT,
            max_verify_samples=VERIFY_SAMPLES,
            # untrained weights: the lossy variants' limits are lifted (their logits sit near zero, so labels flip)
            max_accuracy_drop=100.0,
            min_label_agreement=0.0,
            force=True,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def anchor_config(anchor: Anchor, names: Sequence[str] = SST2_NAMES):  # -> transformers.PretrainedConfig
    """The transformers config of the anchor's shape, with SST-2's two labels or the data's `names`."""
    from transformers import BertConfig, DistilBertConfig

    label_set = LabelSet.from_names(names)
    labels = {"num_labels": len(label_set), "id2label": label_set.id2label, "label2id": label_set.label2id}
    if anchor.architecture == "distilbert":
        return DistilBertConfig(
            vocab_size=VOCAB_SIZE,
            n_layers=anchor.layers,
            dim=anchor.hidden,
            n_heads=anchor.heads,
            hidden_dim=anchor.ffn,
            **labels,
        )
    return BertConfig(
        vocab_size=VOCAB_SIZE,
        num_hidden_layers=anchor.layers,
        hidden_size=anchor.hidden,
        num_attention_heads=anchor.heads,
        intermediate_size=anchor.ffn,
        **labels,
    )


def save_untrained(anchor: Anchor, folder: Path, labels: Sequence[str] = SST2_NAMES) -> Path:
    """A randomly initialised classifier of the anchor's shape and its tokenizer, saved for export."""
    import torch
    from transformers import AutoModelForSequenceClassification, BertTokenizerFast, DistilBertTokenizerFast

    from sst2dist.modeling import DEFAULT_MODEL, resolve_model

    torch.manual_seed(SEED)
    model = AutoModelForSequenceClassification.from_config(anchor_config(anchor, labels)).eval()
    model.save_pretrained(folder)
    tokenizer = BertTokenizerFast.from_pretrained(resolve_model(DEFAULT_MODEL))
    if anchor.architecture == "distilbert":  # the same vocabulary, in the class that drops token_type_ids
        tokenizer = DistilBertTokenizerFast(
            tokenizer_object=tokenizer.backend_tokenizer, model_max_length=tokenizer.model_max_length
        )
    if tokenizer.vocab_size != VOCAB_SIZE:
        raise BenchError(f"the packaged tokenizer has {tokenizer.vocab_size} words, not {VOCAB_SIZE}: reinstall it")
    tokenizer.save_pretrained(folder)
    return folder
