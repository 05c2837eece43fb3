"""`sst2dist bench --menu ... --anchors`: stock shapes built from configs without weights or network (tiny shapes here),
timed beside the menu and placed at their published accuracy; the Pareto frontier, the latency classes and a chart
whose labels never overlap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_bench import TORCH_BLOCKER, write_small_sst2

from sst2dist.bench.anchors import (
    PUBLISHED_NOTE,
    RECIPE_FILES,
    STOCK_ANCHORS,
    VOCAB_SIZE,
    Anchor,
    anchor_config,
    anchor_folder,
    anchor_key,
    cache_root,
)
from sst2dist.bench.menu import add_classes, class_table, frontier_keys, pareto_frontier, published
from sst2dist.bench.menu_report import class_rows, menu_figure, place_labels, render_menu_markdown, text_box
from sst2dist.bench.report import pyplot
from sst2dist.cli import main

TINY_ANCHORS = [
    Anchor("tiny-bert", "bert", 2, 32, 2, 64, 90.0, "invented for the test"),
    Anchor("tiny-distil", "distilbert", 3, 48, 4, 96, 91.0, "invented too"),
]

NETWORK_BLOCKER = """
import os, socket

def refuse(kind, address):
    with open(os.environ["NETWORK_LOG"], "a") as log:
        log.write(f"{kind} {address}\\n")
    raise OSError(f"network blocked in this test: {address}")

real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

def connect(self, address):
    if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
        refuse("connect", address)
    return real_connect(self, address)

def getaddrinfo(host, *args, **kwargs):
    if host not in (None, "127.0.0.1", "::1", "localhost"):
        refuse("resolve", host)
    return real_getaddrinfo(host, *args, **kwargs)

socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
"""

MENU_SCRIPT = """
import json, sys
from sst2dist.bench.anchors import Anchor
from sst2dist.bench.menu import MenuSettings, run_menu

spec = json.loads(sys.argv[1])
anchors = [Anchor(**fields) for fields in spec.pop("anchors")]
run_menu(MenuSettings(**spec, threads=1, batch_size=4, latency_samples=4, warmup=1, anchors=True, anchor_table=anchors))
"""


# --- the published table ----------------------------------------------------------------------------------------


def test_published_numbers_and_shapes_are_the_issues() -> None:
    table = {a.name: (a.architecture, a.layers, a.hidden, a.heads, a.ffn, a.accuracy) for a in STOCK_ANCHORS}
    assert table == {
        "BERT-base": ("bert", 12, 768, 12, 3072, 92.7),
        "DistilBERT": ("distilbert", 6, 768, 12, 3072, 91.3),
        "MiniLM-L12-H384": ("bert", 12, 384, 12, 1536, 93.0),
        "MiniLM-L6-H384": ("bert", 6, 384, 12, 1536, 91.5),
        "BERT-small": ("bert", 4, 512, 8, 2048, 89.7),
    }
    sources = {a.name: a.source for a in STOCK_ANCHORS}
    assert sources["BERT-base"].startswith("Sanh et al. 2019") and "dev" in sources["BERT-base"]  # 92.7 is dev
    assert "Devlin et al. 2019 report 93.5 on test" in sources["BERT-base"]
    assert {a.name: a.split for a in STOCK_ANCHORS} == {
        "BERT-base": "dev",
        "DistilBERT": "dev",
        "MiniLM-L12-H384": "dev",
        "MiniLM-L6-H384": "dev",
        "BERT-small": "test",  # a GLUE test figure, labelled as such on the dev axis
    }
    assert all(a.hidden % a.heads == 0 for a in STOCK_ANCHORS)


def test_no_anchor_variant_reuses_the_full_precision_figure_for_int8_or_bf16() -> None:
    distil = next(a for a in STOCK_ANCHORS if a.name == "DistilBERT")
    assert published(distil, "fp32", 0.5)["accuracy"] == pytest.approx(0.913)
    assert published(distil, "openvino-f32", 0.5)["accuracy"] == pytest.approx(0.913)
    for variant in ("int8", "static-int8", "openvino-bf16"):
        figures = published(distil, variant, 0.5)
        assert figures["accuracy"] is None and figures["accuracy_source"].startswith("not published")


def test_the_anchor_cache_key_follows_the_int8_recipe(tmp_path: Path) -> None:
    recipe = tmp_path / "int8.py"
    recipe.write_text(RECIPE_FILES[0].read_text())
    before = anchor_key(TINY_ANCHORS[0], [recipe])
    assert anchor_key(TINY_ANCHORS[0], [recipe]) == before
    recipe.write_text(recipe.read_text().replace("CALIBRATION_SAMPLES = 256", "CALIBRATION_SAMPLES = 128"))
    assert anchor_key(TINY_ANCHORS[0], [recipe]) != before
    assert anchor_key(TINY_ANCHORS[0]) == anchor_key(TINY_ANCHORS[0], list(RECIPE_FILES))


def test_the_anchor_cache_key_follows_the_openvino_int8_recipe_and_nncf_too() -> None:
    """Anchors are exported with OpenVINO on auto, so NNCF's openvino-int8 is among their variants where NNCF is
    installed: its recipe, NNCF's version and whether NNCF is there decide that graph as int8.py decides int8's."""
    from sst2dist.bench.anchors import ANCHOR_EXPORT, KEY_PACKAGES
    from sst2dist.export import openvino_int8

    assert ANCHOR_EXPORT["openvino"] != "off"
    assert Path(openvino_int8.__file__).resolve() in RECIPE_FILES
    assert "nncf" in KEY_PACKAGES


def test_anchors_of_other_labels_have_their_head_and_their_own_cache_key() -> None:
    """A menu of 3-class bundles gets anchors of those 3 labels (scored by name like the bundles), cached apart from
    SST-2's, whose key is what it was before label sets."""
    names = ("meh", "bad", "good")
    config = anchor_config(TINY_ANCHORS[0], names)
    assert (config.num_labels, config.id2label) == (3, {0: "meh", 1: "bad", 2: "good"})
    assert anchor_config(TINY_ANCHORS[0]).id2label == {0: "negative", 1: "positive"}
    assert anchor_key(TINY_ANCHORS[0], labels=names) != anchor_key(TINY_ANCHORS[0])
    assert anchor_key(TINY_ANCHORS[0], labels=("negative", "positive")) == anchor_key(TINY_ANCHORS[0])


def test_stock_configs_have_the_published_models_sizes() -> None:
    """Encoder parameters of the configs (built on the meta device: no memory, no weights) against the published
    models' counts (bert-base-uncased 109.48M, distilbert-base-uncased 66.36M, MiniLM-L12-H384 33.36M, ...)."""
    import torch
    from transformers import AutoModel

    from sst2dist.modeling import DEFAULT_MODEL, resolve_model

    counts = {}
    for anchor in STOCK_ANCHORS:
        with torch.device("meta"):
            counts[anchor.name] = sum(p.numel() for p in AutoModel.from_config(anchor_config(anchor)).parameters())
    assert counts == {
        "BERT-base": 109_482_240,
        "DistilBERT": 66_362_880,
        "MiniLM-L12-H384": 33_360_000,
        "MiniLM-L6-H384": 22_713_216,
        "BERT-small": 28_763_648,
    }
    packaged = json.loads((Path(resolve_model(DEFAULT_MODEL)) / "config.json").read_text())  # MiniLM-L6-H384 itself
    l6 = anchor_config(next(a for a in STOCK_ANCHORS if a.name == "MiniLM-L6-H384")).to_dict()
    fields = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    assert {f: l6[f] for f in fields} == {f: packaged[f] for f in fields}


# --- frontier and classes on hand-made points -------------------------------------------------------------------


def test_pareto_frontier_keeps_the_best_accuracy_at_each_latency() -> None:
    points = [(5.0, 0.90), (2.0, 0.88), (3.0, 0.87), (3.0, 0.89), (8.0, 0.89), (10.0, 0.93), (1.0, 0.80), (9.0, 0.93)]
    assert pareto_frontier(points) == [6, 1, 3, 0, 7]
    assert pareto_frontier([]) == [] and pareto_frontier([(1.0, 0.5)]) == [0]


def row(model: str, variant: str, p50: float, accuracy: float, passed: bool = True, anchor: Anchor | None = None):
    anchor_fields = None if anchor is None else {**anchor.__dict__}
    return {
        "model": model,
        "variant": variant,
        "passed_gate": passed,
        "anchor": anchor_fields,
        "accuracy": accuracy,
        "accuracy_source": "measured" if anchor is None else PUBLISHED_NOTE,
        "latency_ms": {"p50": p50, "p90": 1.1 * p50},
        "latency_vs_fastest": 1.0,
        "sorted_throughput_sentences_per_s": 100.0,
        "file_size_mb": 1.0,
    }


def hand_made_rows() -> list[dict]:
    small, base = (
        Anchor("small", "bert", 4, 512, 8, 2048, 89.7, "s"),
        Anchor("base", "bert", 12, 768, 12, 3072, 92.7, "b"),
    )
    return [
        row("L3", "int8", 2.0, 0.895),
        row("L6", "fp32", 4.0, 0.901),
        row("L6", "int8", 3.0, 0.950, passed=False),  # the most accurate point, but it failed the gate
        row("teacher", "int8", 11.0, 0.937),
        row("teacher", "fp32", 20.0, 0.939),
        row("small", "fp32", 2.6, 0.897, anchor=small),
        row("small", "int8", 1.9, None, anchor=small),  # no int8 figure was published
        row("base", "int8", 10.0, None, anchor=base),
        row("base", "fp32", 16.0, 0.927, anchor=base),
    ]


def test_failed_gate_variants_and_anchors_are_never_on_the_frontier() -> None:
    rows = hand_made_rows()
    assert frontier_keys(rows) == ["L3/int8", "L6/fp32", "teacher/int8", "teacher/fp32"]
    rows[2]["passed_gate"] = True
    assert frontier_keys(rows) == ["L3/int8", "L6/int8"]  # passed, it beats every slower entry


def test_classes_divide_by_the_reference_fp32_and_name_the_stock_model_of_each() -> None:
    rows, notes = hand_made_rows(), []
    assert add_classes(rows, "l6", notes) == "L6/fp32" and not notes
    assert [r["class"] for r in rows[:3]] == [0.5, 1.0, 0.75]
    table = {entry["class"]: entry for entry in class_table(rows)}
    assert list(table) == ["<= 0.5x", "<= 1x", "<= 2x", "<= 3x", "any"]
    # an anchor's class is its fastest variant WITH a published accuracy: its fp32, not its unpublished int8
    assert table["<= 0.5x"]["best"]["model"] == "L3" and table["<= 0.5x"]["anchors"] == []
    assert table["<= 1x"]["best"]["model"] == "L6" and [a["model"] for a in table["<= 1x"]["anchors"]] == ["small"]
    assert table["<= 1x"]["anchors"][0]["variant"] == "fp32"  # the failed L6 int8 is left out of "best"
    assert table["<= 1x"]["margin_points"] == pytest.approx(100 * (0.901 - 0.897))
    assert table["<= 2x"]["best"]["model"] == "L6" and table["<= 2x"]["margin_points"] is None
    assert table["<= 3x"]["best"]["model"] == "teacher" and table["<= 3x"]["anchors"] == []
    assert [a["model"] for a in table["any"]["anchors"]] == ["base"]
    assert table["any"]["best"]["variant"] == "fp32" and table["any"]["bound"] is None


def test_the_class_table_says_when_a_stock_figure_is_a_test_split_one() -> None:
    """The margin compares our dev accuracy with a published figure: a test-split one is marked as the menu table
    marks it, in the Markdown and the JSON cell alike."""
    small = Anchor("small", "bert", 4, 512, 8, 2048, 89.7, "s", split="test")
    rows = [row("L6", "fp32", 4.0, 0.901), row("small", "fp32", 2.6, 0.897, anchor=small)]
    add_classes(rows, "L6", [])
    table = class_table(rows)
    stock = next(entry for entry in table if entry["anchors"])["anchors"][0]
    assert stock["split"] == "test"
    _, cells = class_rows({"classes": table})
    assert "small fp32 89.70 % (test) (0.65x)" in [cell[2] for cell in cells]
    assert "L6 fp32 90.10 % (1.00x)" in [cell[1] for cell in cells]  # ours are measured on dev: no mark


def test_without_the_reference_entry_there_is_no_class_column(tmp_path: Path) -> None:
    rows, notes = hand_made_rows(), []
    assert add_classes(rows, "L4", notes) is None
    assert all(r["class"] is None for r in rows) and "no entry of --menu named L4" in notes[0]
    rows = [r for r in hand_made_rows() if r["variant"] != "fp32"]
    assert add_classes(rows, "L6", notes) is None and "has no fp32 row" in notes[1]


# --- the chart's labels -----------------------------------------------------------------------------------------


def overlapping(boxes: list) -> list[tuple[int, int]]:
    return [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]


def test_place_labels_separates_labels_that_start_on_top_of_each_other() -> None:
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(4, 3), dpi=100)
    points = [(1.0, 90.0), (1.01, 90.02), (1.02, 89.98), (1.0, 90.0), (3.0, 91.0)]
    labels = [
        axes.annotate(f"model {i} int8", p, textcoords="offset points", xytext=(5, 3)) for i, p in enumerate(points)
    ]
    axes.scatter(*zip(*points, strict=True))
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    assert overlapping([text_box(label, renderer) for label in labels])  # the case is a real one
    place_labels(figure, labels)
    assert not overlapping([text_box(label, renderer) for label in labels])
    plt.close(figure)


def chart_menu(rows: list[dict]) -> dict:
    return {
        "settings": {"bundles": {"L3": "b/l3", "L6": "b/l6", "teacher": "b/t"}, "threads": 2, "batch_size": 32},
        "rows": rows,
        "frontier": frontier_keys(rows),
        "class_reference": None,
    }


def test_menu_chart_labels_never_overlap_and_anchors_are_marked() -> None:
    rows = hand_made_rows()
    rows += [row("L6", "optimized", 4.02, 0.901), row("L6", "static-int8", 3.02, 0.9005)]  # crowd L6
    figure = menu_figure(chart_menu(rows))
    renderer = figure.canvas.get_renderer()
    axes = figure.axes[0]
    labels = [text for text in axes.texts if getattr(text, "arrow_patch", None) is not None]
    assert len(labels) == len([r for r in rows if r["accuracy"] is not None])  # unpublished anchor int8: no point
    assert not overlapping([text_box(label, renderer) for label in labels])
    texts = {label.get_text() for label in labels}
    assert "base fp32 (92.7, published)" in texts and "L6 int8 (failed gate)" in texts
    assert not any(text.startswith("base int8") for text in texts)
    footnote = [t.get_text() for t in axes.texts if t not in labels]
    assert any(PUBLISHED_NOTE in t and "base 92.7 (b)" in t for t in footnote)
    grey = [label for label in labels if label.get_text().endswith("(failed gate)")]
    assert [label.get_color() for label in grey] == ["0.6"]
    pyplot().close(figure)


# --- built for real: tiny shapes, no weights, no network (slow: two Optimum exports, about 100 s) -----------


def run_menu_child(spec: dict, tmp: Path, block_torch: bool = False) -> subprocess.CompletedProcess:
    (tmp / "sitecustomize.py").write_text(NETWORK_BLOCKER + (TORCH_BLOCKER if block_torch else ""))
    env = {**os.environ, "PYTHONPATH": str(tmp), "NETWORK_LOG": str(tmp / "network.log"), "HF_HUB_OFFLINE": "1"}
    env |= {"HF_HOME": str(tmp / "hf-home"), "OMP_NUM_THREADS": "1", "IMPORT_LOG": str(tmp / "imports.log")}
    env.pop("SST2DIST_CACHE", None)
    command = [sys.executable, "-c", MENU_SCRIPT, json.dumps(spec)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def anchored(tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("anchors")
    (tmp / "data").mkdir()
    spec = {
        "bundles": {"l6": str(tiny_bundle_dir)},
        "data": str(write_small_sst2(tmp / "data")),
        "output": str(tmp / "out"),
        "progress": True,
        "anchors": [a.__dict__ for a in TINY_ANCHORS],
    }
    first = run_menu_child(spec, tmp)
    menu = json.loads((tmp / "out" / "menu.json").read_text())
    return {"tmp": tmp, "spec": spec, "first": first, "menu": menu}


@pytest.mark.slow
def test_anchors_are_built_offline_without_weights(anchored: dict) -> None:
    tmp = anchored["tmp"]
    # every connection was refused and the build still succeeded; none was even tried towards the hub
    attempts = (tmp / "network.log").read_text().splitlines() if (tmp / "network.log").exists() else []
    assert not [line for line in attempts if "huggingface" in line or "hf.co" in line], attempts
    # the hub's cache and datasets' downloads stay empty (datasets only converts the local TSVs)
    downloaded = [p for folder in ("hub", "datasets/downloads") for p in (tmp / "hf-home" / folder).rglob("*")]
    assert [p for p in downloaded if p.is_file()] == []
    assert anchored["first"].stderr.count("building anchor") == len(TINY_ANCHORS)


@pytest.mark.slow
def test_anchor_bundles_have_the_shapes_of_their_configs(anchored: dict) -> None:
    import onnx

    bundles = {r["model"]: Path(r["bundle"]) for r in anchored["menu"]["rows"] if r["anchor"]}
    assert set(bundles) == {a.name for a in TINY_ANCHORS}
    for anchor in TINY_ANCHORS:
        bundle = bundles[anchor.name]
        assert bundle.parent == anchored["tmp"] / "out" / "anchors"
        config = json.loads((bundle / "config.json").read_text())
        assert config["model_type"] == anchor.architecture and config["vocab_size"] == VOCAB_SIZE
        graph = onnx.load(str(bundle / "model.onnx")).graph
        shapes = [list(t.dims) for t in graph.initializer]
        assert [VOCAB_SIZE, anchor.hidden] in shapes  # word embeddings
        weights = {t.name: list(t.dims) for t in graph.initializer}
        ffn_up = [
            n for n in graph.node if n.op_type == "MatMul" and [anchor.hidden, anchor.ffn] in map(weights.get, n.input)
        ]
        assert len(ffn_up) == anchor.layers
        variants = set(json.loads((bundle / "manifest.json").read_text())["variants"])
        assert {"fp32", "optimized", "int8", "static-int8"} <= variants  # every engine and precision


@pytest.mark.slow
def test_anchors_are_timed_beside_the_menu_at_their_published_accuracy(anchored: dict) -> None:
    menu = anchored["menu"]
    anchors = {(r["model"], r["variant"]): r for r in menu["rows"] if r["anchor"]}
    bundle_variants = {r["variant"] for r in menu["rows"] if not r["anchor"]}
    assert bundle_variants == {"fp32", "optimized", "int8"}  # the tiny bundle's; anchors run through each
    assert set(anchors) == {(a.name, v) for a in TINY_ANCHORS for v in bundle_variants}
    for (name, variant), r in anchors.items():
        source = next(a for a in TINY_ANCHORS if a.name == name)
        if variant == "int8":
            assert r["accuracy"] is None and r["accuracy_source"].startswith("not published")
        else:
            assert r["accuracy"] == source.accuracy / 100 and PUBLISHED_NOTE in r["accuracy_source"]
            assert source.source in r["accuracy_source"]
        assert 0 <= r["untrained_accuracy"] <= 1
        assert len(menu["raw"][f"{name}/{r['variant']}"]["latency_ms"]) == 4
    assert menu["class_reference"] == "l6/fp32"
    reference = next(r for r in menu["rows"] if r["model"] == "l6" and r["variant"] == "fp32")
    for r in menu["rows"]:
        assert r["class"] == pytest.approx(r["latency_ms"]["p50"] / reference["latency_ms"]["p50"])
    assert all(key.startswith("l6/") for key in menu["frontier"])
    report = (anchored["tmp"] / "out" / "menu.md").read_text()
    assert "## Latency classes" in report and "## Anchors" in report and "(published)" in report
    assert report == render_menu_markdown(menu)
    assert (anchored["tmp"] / "out" / "anchors" / ".gitignore").read_text() == "*\n"


@pytest.mark.slow
def test_a_rerun_reuses_the_built_anchors(anchored: dict) -> None:
    tmp = anchored["tmp"]
    onnx_files = sorted((tmp / "out" / "anchors").rglob("*.onnx"))
    before = {p: p.stat().st_mtime_ns for p in onnx_files}
    second = run_menu_child(anchored["spec"], tmp, block_torch=True)  # cached anchors need no torch
    assert "building anchor" not in second.stderr
    assert not (tmp / "imports.log").exists(), (tmp / "imports.log").read_text()
    assert {p: p.stat().st_mtime_ns for p in sorted((tmp / "out" / "anchors").rglob("*.onnx"))} == before


def test_sst2dist_cache_moves_the_anchor_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SST2DIST_CACHE", raising=False)
    assert cache_root(str(tmp_path / "out")) == tmp_path / "out" / "anchors"
    monkeypatch.setenv("SST2DIST_CACHE", str(tmp_path / "cache"))
    folder = anchor_folder(TINY_ANCHORS[0], cache_root(str(tmp_path / "out")))
    assert folder.parent == tmp_path / "cache" / "anchors" and folder.name.startswith("tiny-bert-")
    published_elsewhere = Anchor(**{**TINY_ANCHORS[0].__dict__, "accuracy": 50.0, "source": "another paper"})
    wider = Anchor(**{**TINY_ANCHORS[0].__dict__, "hidden": 64})
    assert anchor_folder(published_elsewhere, folder.parent) == folder  # the same graphs: no rebuild
    assert anchor_folder(wider, folder.parent) != folder


# --- bad input ----------------------------------------------------------------------------------------------------


def test_anchors_need_the_menu_and_a_free_name(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    alone = CliRunner().invoke(main, ["bench", "--bundle", str(tiny_bundle_dir), "--anchors", "--output", str(output)])
    assert alone.exit_code == 2 and "--anchors goes with --menu" in alone.output
    args = [
        "bench",
        "--menu",
        f"bert-base={tiny_bundle_dir}",
        "--anchors",
        "--data",
        str(tmp_path),
        "--output",
        str(output),
    ]
    clash = CliRunner().invoke(main, args)
    assert clash.exit_code == 1 and "'bert-base' is also an anchor's name" in clash.output
    assert not output.exists()


def test_anchors_without_the_train_extra_fail_before_any_work(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(TORCH_BLOCKER)
    output = tmp_path / "out"
    command = [sys.executable, "-m", "sst2dist.cli", "bench", "--menu", f"l6={tiny_bundle_dir}", "--anchors",
               "--data", str(tmp_path), "--output", str(output), "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "IMPORT_LOG": str(tmp_path / "imports.log")}
    env.pop("SST2DIST_CACHE", None)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "pip install 'sst2dist[train]', or drop --anchors" in result.stderr
    assert not output.exists()
