"""The accuracy-latency menu across models: every variant of several bundles, measured in one run and one process,
so a user picks a point on the curve (e.g. a teacher and its distilled students, fp32 and int8).

    sst2dist bench --menu teacher=export/teacher --menu L6=export/l6 --menu L3=export/l3 --data ../shared/data/sst2

Per model and variant: dev accuracy, batch-1 latency p50/p90 (all models interleaved block by block, so drift hits
them alike), throughput of length-sorted batches, and file size. No PyTorch (onnxruntime, OpenVINO where
installed): runs on the base install.

With `anchors`, untrained models of the stock shapes (`sst2dist.bench.anchors`) are timed in the same run and placed
at their published accuracy; every row gets a latency class (p50 / the reference entry's fp32 p50), and the menu
names its Pareto frontier and, per class, its best entry beside the stock models of that cost.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sst2dist.bench.anchors import (
    PUBLISHED_NOTE,
    STOCK_ANCHORS,
    Anchor,
    anchor_bundles,
    cache_root,
    check_anchor_table,
    check_buildable,
    published_accuracy,
)
from sst2dist.bench.measure import (
    ORT_BACKENDS,
    BenchError,
    OrtBackend,
    flops_counter,
    latency_percentiles,
    measure_latency,
    measure_throughput,
    warm_up,
)
from sst2dist.bench.run import check_labels, environment, load_average, run_header
from sst2dist.bench.settings import bundle_backends, check_counts, output_folder
from sst2dist.data import DEFAULT_DATA, read_validation
from sst2dist.data_options import DataColumns, label_column_option, labels_option, text_column_option
from sst2dist.environment import usable_cpus
from sst2dist.labels import SST2_NAMES, is_sst2_data, predicted_label_ids


@dataclass
class MenuSettings(DataColumns):
    bundles: dict[str, str]  # model name -> bundle folder
    data: str = DEFAULT_DATA
    text_column: str = text_column_option()
    label_column: str = label_column_option()
    labels: str | None = labels_option()
    backends: Sequence[str] | None = None  # ORT backends (ort-fp32, ort-int8, ...); None: every variant present
    threads: int | None = None  # None: every core
    batch_size: int = 32  # the length-sorted throughput pass, which also gives the accuracy
    output: str | None = None  # None: bench/results/menu; "{cpu}" becomes environment.cpu_kind()
    max_samples: int | None = None
    latency_samples: int | None = None
    warmup: int = 20
    progress: bool = True
    notes: list[str] = field(default_factory=list)
    anchors: bool = False  # time untrained stock shapes too, placed at their published accuracy
    anchor_table: Sequence[Anchor] | None = None  # None: STOCK_ANCHORS (tests pass tiny shapes)
    class_reference: str = "l6"  # the entry whose fp32 p50 is 1x in the class column


CLASS_BOUNDS = (("<= 0.5x", 0.5), ("<= 1x", 1.0), ("<= 2x", 2.0), ("<= 3x", 3.0), ("any", math.inf))


@dataclass(frozen=True)
class Entry:
    model: str
    variant: str
    bundle: str
    passed_gate: bool
    anchor: Anchor | None = None

    @property
    def key(self) -> str:
        return f"{self.model}/{self.variant}"


def parse_menu_items(items: Sequence[str]) -> dict[str, str]:
    """['teacher=export/teacher', 'L6=export/l6'] -> {'teacher': 'export/teacher', 'L6': 'export/l6'}."""
    bundles: dict[str, str] = {}
    for item in items:
        name, sep, folder = item.partition("=")
        name, folder = name.strip(), folder.strip()
        if not sep or not name or not folder or "/" in name:
            raise BenchError(f"--menu takes NAME=BUNDLE_DIR, e.g. --menu L6=export/l6; got {item!r}")
        if name in bundles:
            raise BenchError(f"--menu names {name!r} twice: give every bundle its own name")
        bundles[name] = folder
    return bundles


def check_menu(settings: MenuSettings) -> list[Entry]:
    """Validate the settings before any work starts; every (model, variant) to measure. Raises BenchError."""
    if not settings.bundles:
        raise BenchError("--menu needs at least one NAME=BUNDLE_DIR")
    settings.threads = settings.threads or usable_cpus()
    check_counts(
        [settings.threads], [settings.batch_size], settings.max_samples, settings.latency_samples, settings.warmup
    )
    wanted = list(ORT_BACKENDS) if settings.backends is None else list(dict.fromkeys(settings.backends))
    foreign = [name for name in wanted if name not in ORT_BACKENDS]
    if foreign or not wanted:
        raise BenchError(f"the menu runs bundle variants only: choose --backends from {', '.join(ORT_BACKENDS)}")
    entries = [entry for name, bundle in settings.bundles.items() for entry in bundle_entries(name, bundle, wanted)]
    settings.output = output_folder(settings.output, Path("bench") / "results" / "menu")
    if settings.anchors:
        settings.anchor_table = tuple(settings.anchor_table or STOCK_ANCHORS)
        check_anchor_table(settings.anchor_table, list(settings.bundles))
        check_buildable(settings.anchor_table, cache_root(settings.output), anchor_labels(settings))
    return entries


def anchor_labels(settings: MenuSettings) -> list[str]:
    """The anchors are classifiers of the labels the menu's models name (its first bundle's: every bundle is checked
    against the data's labels), so they are scored like them."""
    from sst2dist.runtime import read_manifest

    return read_manifest(next(iter(settings.bundles.values())))["labels"]


def bundle_entries(name: str, bundle: str, wanted: list[str]) -> list[Entry]:
    manifest, present = bundle_backends(bundle)
    chosen = [backend for backend in wanted if backend in present]
    if not chosen:
        raise BenchError(f"--menu {name}={bundle} has none of {', '.join(wanted)}: export it or change --backends")
    variants = manifest["variants"]
    return [Entry(name, ORT_BACKENDS[b], bundle, bool(variants[ORT_BACKENDS[b]].get("passed"))) for b in chosen]


def anchor_entries(settings: MenuSettings, menu_variants: Sequence[str]) -> list[Entry]:
    """Every anchor through each variant (engine and precision) that the menu's bundles are timed in and that runs
    here, the anchors (classifiers of `anchor_labels`) built (or found in the cache) now."""
    labels = anchor_labels(settings)
    say = (lambda line: print(line, file=sys.stderr)) if settings.progress else (lambda _: None)
    reading = {"text_column": settings.text_column, "label_column": settings.label_column, "labels": settings.labels}
    bundles = anchor_bundles(settings.anchor_table, cache_root(settings.output), settings.data, say, labels, **reading)
    entries = []
    for anchor in settings.anchor_table:
        manifest, present = bundle_backends(str(bundles[anchor.name]))
        variants = [ORT_BACKENDS[b] for b in present]
        for variant in (v for v in dict.fromkeys(menu_variants) if v in variants):
            passed = bool(manifest["variants"][variant]["passed"])
            entries.append(Entry(anchor.name, variant, str(bundles[anchor.name]), passed, anchor))
    return entries


def run_menu(settings: MenuSettings) -> dict:
    """Measure every (model, variant), write menu.json, menu.md and menu.png to settings.output; return the menu."""
    from sst2dist.bench.menu_report import write_menu
    from sst2dist.runtime import read_manifest

    entries = check_menu(settings)
    sentences, labels, label_set = read_validation(
        settings.data, settings.max_samples, settings.columns, settings.label_order
    )
    bundles = {f"--menu {name}={bundle}": read_manifest(bundle)["labels"] for name, bundle in settings.bundles.items()}
    check_labels(bundles, label_set.names)
    settings.latency_samples = min(settings.latency_samples or len(sentences), len(sentences))
    if settings.anchors:
        entries += anchor_entries(settings, [e.variant for e in entries])
        if not is_sst2_data(settings.data, label_set.names):  # own data, even labelled 0/1
            settings.notes.append(
                "the anchors' accuracies are their published SST-2 figures, not this data's: compare their latency"
            )
    load_before, started = load_average(), time.perf_counter()
    measured = measure_menu(settings, entries, sentences)
    rows = menu_rows(entries, measured, labels, label_set.names)
    reference = add_classes(rows, settings.class_reference, settings.notes)
    menu = {
        **run_header(settings),
        "dataset": {
            "data": settings.data,
            "split": "validation",
            "sentences": len(sentences),
            "latency_sentences": settings.latency_samples,
            "label_names": list(label_set.names),
            "labels": labels.tolist(),
        },
        "environment": environment([settings.threads], load_before, settings.notes),
        "duration_seconds": time.perf_counter() - started,
        "rows": rows,
        "class_reference": reference,
        "classes": class_table(rows) if reference else None,
        "frontier": frontier_keys(rows),
        "raw": {key: {"latency_ms": figures["latency_ms"]} for key, figures in measured.items()},
    }
    write_menu(menu, Path(settings.output))
    return menu


def measure_menu(settings: MenuSettings, entries: list[Entry], sentences: list[str]) -> dict[str, dict]:
    """Batch-1 latency and the sorted-batch pass, every (model, variant) interleaved."""
    from tqdm import tqdm

    backends = {e.key: OrtBackend(e.key, e.bundle, settings.threads, e.variant) for e in entries}
    counters = {e.key: flops_counter(bundle_config(e.bundle)) for e in entries}
    units = len(entries) * (settings.latency_samples + len(sentences))
    with tqdm(total=units, unit="sent", file=sys.stderr, disable=not settings.progress, dynamic_ncols=True) as bar:
        bar.set_description("warm-up")
        warm_up(backends, sentences, settings.warmup, [settings.batch_size])
        bar.set_description("batch-1 latency")
        latency = measure_latency(backends, sentences[: settings.latency_samples], bar.update)
        bar.set_description(f"sorted batches of {settings.batch_size}")
        throughput = measure_throughput(backends, sentences, settings.batch_size, counters, bar.update, sort=True)
    return {
        key: {
            "latency_ms": [round(v, 4) for v in latency[key]["total"]],
            "throughput": throughput[key],
            "labels": backend.labels,
            "files": backend.files,
        }
        for key, backend in backends.items()
    }


def bundle_config(bundle: str) -> dict:
    return json.loads((Path(bundle) / "config.json").read_text(encoding="utf-8"))


def menu_rows(
    entries: list[Entry], measured: dict[str, dict], labels: np.ndarray, data_labels: Sequence[str] = SST2_NAMES
) -> list[dict]:
    """One row per (model, variant), sorted by batch-1 p50, with the ratio to the fastest p50; accuracy by label
    name against `data_labels`."""
    rows = []
    for entry in entries:
        figures = measured[entry.key]
        passes = figures["throughput"]
        predictions = predicted_label_ids(passes["logits"], figures["labels"], data_labels)
        size = sum(Path(p).stat().st_size for p in figures["files"])
        rows.append(
            {
                **asdict(entry),
                "model_type": bundle_config(entry.bundle).get("model_type"),
                "accuracy": float((predictions == labels).mean()),
                "latency_ms": latency_percentiles(figures["latency_ms"]),
                "sorted_throughput_sentences_per_s": passes["sentences"] / passes["seconds"],
                "padded_tokens": passes["padded_tokens"],
                "file_size_mb": size / 1e6,
                "file_size_bytes": size,
                "predictions": predictions.tolist(),
                "accuracy_source": "measured",
            }
        )
        if entry.anchor:
            rows[-1] |= published(entry.anchor, entry.variant, rows[-1]["accuracy"])
    rows.sort(key=lambda row: row["latency_ms"]["p50"])
    for row in rows:
        row["latency_vs_fastest"] = row["latency_ms"]["p50"] / rows[0]["latency_ms"]["p50"]
    return rows


def published(anchor: Anchor, variant: str, untrained_accuracy: float) -> dict:
    """An anchor row's accuracy is the stock model's published one for an exact variant, None for a lossy one (no
    int8 or bf16 figure was published); what its untrained weights scored is kept apart."""
    accuracy = published_accuracy(anchor, variant)
    if accuracy is None:
        source = f"not published: {anchor.name}'s published figure is full precision, this is {variant}"
    else:
        source = f"{PUBLISHED_NOTE} ({anchor.source}; {anchor.split})"
    figures = {"accuracy": accuracy, "accuracy_source": source, "published_split": anchor.split}
    return figures | {"untrained_accuracy": untrained_accuracy}


# --- classes and the frontier -------------------------------------------------------------------------------------


def add_classes(rows: list[dict], reference: str, notes: list[str]) -> str | None:
    """row["class"] = p50 / the reference entry's fp32 p50 (None for all rows without one); the reference's key."""
    for row in rows:
        row["class"] = None
    matches = [r for r in rows if r["anchor"] is None and r["model"].lower() == reference.lower()]
    if len({r["model"] for r in matches}) != 1:
        found = "two entries" if matches else "no entry"
        notes.append(f"no class column: {found} of --menu named {reference} (--class-reference names the 1x entry)")
        return None
    base = next((r for r in matches if r["variant"] == "fp32"), None)
    if base is None:
        notes.append(f"no class column: {matches[0]['model']} has no fp32 row: add ort-fp32 to --backends")
        return None
    for row in rows:
        row["class"] = row["latency_ms"]["p50"] / base["latency_ms"]["p50"]
    return f"{base['model']}/{base['variant']}"


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, accuracy) points on the frontier, fastest first: each is more accurate than every
    faster point (of equal latencies, only the most accurate)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    kept: list[int] = []
    for i in order:
        if not kept or points[i][1] > points[kept[-1]][1]:
            kept.append(i)
    return kept


def frontier_keys(rows: list[dict]) -> list[str]:
    """The menu's frontier: measured entries that passed the gate; anchors and failed variants never count."""
    candidates = [r for r in rows if r["anchor"] is None and r["passed_gate"]]
    chosen = pareto_frontier([(r["latency_ms"]["p50"], r["accuracy"]) for r in candidates])
    return [f"{candidates[i]['model']}/{candidates[i]['variant']}" for i in chosen]


def class_table(rows: list[dict]) -> list[dict]:
    """Per class: the most accurate gated entry at or under its bound, and the anchors whose fastest variant falls in
    it (above the previous bound), with the margin in points between the two."""
    measured = [r for r in rows if r["anchor"] is None and r["passed_gate"]]
    stock = fastest_per_model([r for r in rows if r["anchor"] is not None and r["accuracy"] is not None])
    table, lower = [], 0.0
    for label, bound in CLASS_BOUNDS:
        inside = [r for r in measured if r["class"] <= bound]
        best = max(inside, key=lambda r: (r["accuracy"], -r["class"]), default=None)
        anchors = [class_cell(r) for r in stock if lower < r["class"] <= bound]
        margin = None
        if best and anchors:
            margin = 100 * (best["accuracy"] - max(a["accuracy"] for a in anchors))
        entry = {"class": label, "bound": bound if math.isfinite(bound) else None, "best": best and class_cell(best)}
        table.append(entry | {"anchors": anchors, "margin_points": margin})
        lower = bound
    return table


def fastest_per_model(rows: list[dict]) -> list[dict]:
    fastest: dict[str, dict] = {}
    for row in rows:
        if row["model"] not in fastest or row["latency_ms"]["p50"] < fastest[row["model"]]["latency_ms"]["p50"]:
            fastest[row["model"]] = row
    return list(fastest.values())


def class_cell(row: dict) -> dict:
    """An entry of the class table; an anchor's names the split its published figure is on (ours are dev)."""
    cell = {k: row[k] for k in ("model", "variant", "accuracy", "class", "accuracy_source")}
    return cell | ({"split": row["anchor"].get("split", "dev")} if row["anchor"] else {})
