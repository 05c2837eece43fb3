"""How a menu (accuracy against latency across models) is shown and saved: the table, the latency classes, the
anchors, and the chart with its Pareto frontier and labels that never overlap.

Everything here reads a menu dict built by `sst2dist.bench.menu` and measures nothing.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

from sst2dist.bench.anchors import PUBLISHED_NOTE
from sst2dist.bench.report import Table, cpu_line, markdown_table, plain_table, pyplot, times, write_files
from sst2dist.labels import data_name


def menu_table(menu: dict) -> Table:
    """One row per model and variant, fastest batch-1 p50 first; a class column when the menu has a reference."""
    batch = menu["settings"]["batch_size"]
    classes = bool(menu.get("class_reference"))
    header = ["model", "variant", "accuracy %", "p50 ms", "p90 ms", "x fastest"] + ["class"] * classes
    rows = [
        [
            row["model"],
            row["variant"] + ("" if row["passed_gate"] else " (failed gate)"),
            accuracy_cell(row),
            f"{row['latency_ms']['p50']:.2f}",
            f"{row['latency_ms']['p90']:.2f}",
            times(row["latency_vs_fastest"]),
            *([times(row["class"])] if classes else []),
            f"{row['sorted_throughput_sentences_per_s']:.0f}",
            f"{row['file_size_mb']:.1f}",
        ]
        for row in menu["rows"]
    ]
    return header + [f"sorted bs{batch} sent/s", "MB"], rows


def accuracy_cell(row: dict) -> str:
    """Measured, or an anchor's published figure with its split; "-" for an anchor variant never published."""
    if row["accuracy"] is None:
        return "- (not published)"
    if not row.get("anchor"):
        return f"{100 * row['accuracy']:.2f}"
    return f"{100 * row['accuracy']:.2f} (published, {row['anchor'].get('split', 'dev')})"


def class_label(cell: dict) -> str:
    split = " (test)" if cell.get("split") == "test" else ""  # the margin then compares dev with test
    return f"{cell['model']} {cell['variant']} {100 * cell['accuracy']:.2f} %{split} ({times(cell['class'])})"


def class_rows(menu: dict) -> Table:
    """Per latency class: the best gated entry, the stock models of that cost, and the margin in points."""
    header = ["class", "best entry (accuracy, class)", "stock model at that cost (published)", "vs stock pts"]
    rows = [
        [
            entry["class"],
            class_label(entry["best"]) if entry["best"] else "-",
            "; ".join(class_label(anchor) for anchor in entry["anchors"]) or "-",
            f"{entry['margin_points']:+.2f}" if entry["margin_points"] is not None else "-",
        ]
        for entry in menu["classes"]
    ]
    return header, rows


def anchor_rows(menu: dict) -> Table:
    """The anchors of this run with their shapes and where their accuracy comes from."""
    anchors = {row["model"]: row["anchor"] for row in menu["rows"] if row.get("anchor")}
    header = ["anchor", "shape (untrained, timed here)", "SST-2 accuracy % (full precision)", "split", "source"]
    rows = [
        [
            name,
            f"{a['architecture']} {a['layers']}x{a['hidden']}, {a['heads']} heads, FFN {a['ffn']}",
            f"{a['accuracy']:.1f}",
            a.get("split", "dev"),
            f"{a['source']}; {PUBLISHED_NOTE}",
        ]
        for name, a in anchors.items()
    ]
    return header, rows


def frontier_line(menu: dict) -> str:
    keys = menu.get("frontier") or []
    return "Pareto frontier (the most accurate gated entry at each latency): " + (" -> ".join(keys) or "none")


def menu_caption(menu: dict) -> str:
    data, settings = menu["dataset"], menu["settings"]
    reference = menu.get("class_reference")
    classes = f"; `class` = p50 / the p50 of {reference} in this run" if reference else ""
    return (
        f"Accuracy on {data['sentences']} {data_name(data['data'], data.get('label_names'))} validation sentences "
        f"(from the sorted batch-{settings['batch_size']} pass); batch-1 latency over {data['latency_sentences']} "
        "sentences, tokenization included, all models "
        f"interleaved; {settings['threads']} thread(s); `x fastest` = p50 / the fastest p50 of this run{classes}."
    )


def render_menu_terminal(menu: dict) -> str:
    cpu = cpu_line(menu["environment"]["cpu"])
    lines = [cpu, menu_caption(menu), plain_table(*menu_table(menu), text_columns=2), frontier_line(menu)]
    if menu.get("classes"):
        lines += ["", plain_table(*class_rows(menu), text_columns=3)]
    return "\n".join(lines + menu["notes"])


def render_menu_markdown(menu: dict) -> str:
    lines = [
        "# sst2dist menu: accuracy against latency",
        "",
        f"{menu['created']}, data `{menu['dataset']['data']}`. {cpu_line(menu['environment']['cpu'])}.",
        "",
        menu_caption(menu),
        "",
        markdown_table(*menu_table(menu), text_columns=2),
        "",
        frontier_line(menu) + ".",
        "",
        "![accuracy against latency](menu.png)",
        "",
        *class_section(menu),
        *anchor_section(menu),
        "Bundles: " + ", ".join(f"{name} `{path}`" for name, path in menu["settings"]["bundles"].items()),
    ]
    return "\n".join(lines + [f"- {note}" for note in menu["notes"]] + [""])


def class_section(menu: dict) -> list[str]:
    if not menu.get("classes"):
        return []
    return [
        "## Latency classes",
        "",
        f"A class bounds batch-1 p50 / the p50 of `{menu['class_reference']}` in this run. Best entry: the most "
        "accurate variant that passed the gate at or under the bound. Stock: the anchors whose fastest variant with a "
        f"published accuracy (an exact one) falls in the class (above the previous bound) ({PUBLISHED_NOTE}); "
        "`(test)` marks a figure published on the test split, which the margin compares with our dev accuracy.",
        "",
        markdown_table(*class_rows(menu), text_columns=3),
        "",
    ]


def anchor_section(menu: dict) -> list[str]:
    header, rows = anchor_rows(menu)
    if not rows:
        return []
    return [
        "## Anchors",
        "",
        "Untrained models of the stock shapes, built from transformers configs (no weights, no network), exported "
        "like a bundle (every variant, the same int8 recipes) and timed in this run through each variant the bundles "
        "are timed in. The published accuracy is a full-precision figure: it is shown for the exact variants "
        "(fp32, optimized, openvino-f32) only; int8 and bf16 anchors are timed, not placed (none was published). "
        "A test-split figure is marked `test`: the menu measures dev.",
        "",
        markdown_table(header, rows, text_columns=5),
        "",
    ]


# --- the menu chart ---------------------------------------------------------------------------------------------


def write_menu_chart(menu: dict, path: Path) -> None:
    plt = pyplot()
    figure = menu_figure(menu)
    figure.savefig(path, format="png", dpi=figure.dpi, bbox_inches="tight")
    plt.close(figure)


def menu_figure(menu: dict):  # -> matplotlib.figure.Figure
    """Accuracy against batch-1 latency: the menu's points (failed-gate variants grey), its Pareto frontier, the
    anchors as stars at their published accuracy, and labels moved apart so that none overlaps another."""
    from matplotlib.ticker import FormatStrFormatter

    plt = pyplot()
    figure, axes = plt.subplots(figsize=(9, 6), dpi=110)
    models = list(menu["settings"]["bundles"])
    labels, markers = [], []
    for row in (r for r in menu["rows"] if r["accuracy"] is not None):  # an unpublished anchor variant has no y
        point = (row["latency_ms"]["p50"], 100 * row["accuracy"])
        style, color = point_style(row, models)
        axes.scatter(*point, **style)
        markers.append((point, style.get("s", MARKER_AREA)))
        labels.append(axes.annotate(point_text(row), point, color=color, **LABEL_STYLE))
    plot_frontier(axes, menu)
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    latencies = [row["latency_ms"]["p50"] for row in menu["rows"]]
    if max(latencies) < 20 * min(latencies):  # minor tick labels only where they do not crowd
        axes.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
    axes.set_xlabel(f"batch-1 p50 latency, ms (log scale), {menu['settings']['threads']} thread(s)")
    dataset = menu.get("dataset", {})  # a menu drawn by hand may leave it out: SST-2
    axes.set_ylabel(f"{data_name(dataset.get('data'), dataset.get('label_names'))} dev accuracy, %")
    axes.set_title(
        "Accuracy against latency: square fp32 graphs, circle int8, grey failed the gate,\n"
        f"dashed the Pareto frontier, star an anchor at its published accuracy ({PUBLISHED_NOTE})",
        fontsize=9,
    )
    axes.grid(alpha=0.3)
    footnote = anchor_footnote(menu)
    if footnote:
        axes.annotate(footnote, (0, 0), xycoords="axes fraction", xytext=(0, -34), textcoords="offset points",
                      va="top", fontsize=7)  # fmt: skip
    figure.tight_layout()
    figure.canvas.draw()  # settles the limits and layout that the display boxes below are measured in
    boxes = [marker_box(axes, point, area) for point, area in markers]
    place_labels(figure, labels, boxes, axes.get_window_extent(figure.canvas.get_renderer()))
    return figure


def marker_box(axes, point: tuple[float, float], area: float):  # -> matplotlib.transforms.Bbox
    """A marker's square in display units (scatter collections report no extent of their own)."""
    from matplotlib.transforms import Bbox

    x, y = axes.transData.transform(point)
    half = area**0.5 / 2 * axes.figure.dpi / 72
    return Bbox.from_extents(x - half, y - half, x + half, y + half)


LABEL_STYLE = {
    "textcoords": "offset points",
    "xytext": (7, 3),  # clear of the largest marker (a star, 5.5 points across half)
    "fontsize": 7,
    "annotation_clip": False,
    "arrowprops": {"arrowstyle": "-", "color": "0.6", "lw": 0.5, "shrinkA": 0, "shrinkB": 3},
}
FAILED_GREY = "0.6"
MARKER_AREA = 36  # points², scatter's default
FOOTNOTE_WIDTH = 150  # characters a line at 7 points in the 9-inch figure


def point_style(row: dict, models: list[str]) -> tuple[dict, str]:
    """The scatter style of a row and the colour of its label."""
    fp32_graph = "int8" not in row["variant"]
    if row.get("anchor"):
        face = "black" if fp32_graph else "none"
        return {"marker": "*", "s": 120, "facecolors": face, "edgecolors": "black", "zorder": 3}, "black"
    color = f"C{models.index(row['model']) % 10}" if row["passed_gate"] else FAILED_GREY
    return {"marker": "s" if fp32_graph else "o", "color": color, "zorder": 3}, color


def point_text(row: dict) -> str:
    text = f"{row['model']} {row['variant']}"
    if row.get("anchor"):
        split = row["anchor"].get("split", "dev")
        return f"{text} ({row['anchor']['accuracy']:.1f}, published" + (", test)" if split == "test" else ")")
    return text if row["passed_gate"] else f"{text} (failed gate)"


def plot_frontier(axes, menu: dict) -> None:
    """A step through the frontier: the best accuracy reachable at each latency."""
    by_key = {f"{row['model']}/{row['variant']}": row for row in menu["rows"]}
    points = [(by_key[k]["latency_ms"]["p50"], 100 * by_key[k]["accuracy"]) for k in menu.get("frontier") or []]
    if points:
        x, y = zip(*points, strict=True)
        axes.plot(x, y, "--", drawstyle="steps-post", color="0.25", lw=1, zorder=2, label="Pareto frontier")


def anchor_footnote(menu: dict) -> str:
    anchors = {row["model"]: row["anchor"] for row in menu["rows"] if row.get("anchor")}
    sources = "; ".join(f"{name} {a['accuracy']:.1f} ({a['source']})" for name, a in anchors.items())
    text = (
        f"Anchors (untrained stock shapes timed here), full-precision SST-2 accuracy {PUBLISHED_NOTE}, "
        f"at their exact variants only: {sources}."
    )
    return textwrap.fill(text, FOOTNOTE_WIDTH) if anchors else ""


def text_box(label, renderer):  # -> matplotlib.transforms.Bbox
    """A label's text box in display units, without its leader line."""
    from matplotlib.text import Text

    label.update_positions(renderer)
    return Text.get_window_extent(label, renderer)


def place_labels(figure, labels: list, obstacles: Sequence = (), bounds=None) -> None:
    """Left to right, move each label up or down from its point by whole label heights (0, +1, -1, +2, ...) to the
    first place where its text overlaps no label placed before it, stays within `bounds` vertically (the axes: clear
    of the title) and overlaps no obstacle (the markers). Labels never overlap; where no place meets the other two
    wishes, the one that meets most (bounds first) is taken. Deterministic: the same menu, the same chart."""
    renderer = figure.canvas.get_renderer()
    placed: list = []
    for label in sorted(labels, key=lambda a: (a.xy[0], a.xy[1], a.get_text())):
        dx, dy = label.xyann
        step = text_box(label, renderer).height * 72 / figure.dpi + 1  # points, with a 1-point gap
        best: tuple[int, tuple[float, float]] | None = None
        for shift in (0, *(sign * k for k in range(1, 2 * len(labels) + 2) for sign in (1, -1))):
            label.xyann = (dx, dy + shift * step)
            box = text_box(label, renderer)
            if any(box.overlaps(other) for other in placed):
                continue
            inside = bounds is None or (box.y0 >= bounds.y0 and box.y1 <= bounds.y1)
            rank = 2 * inside + (not any(box.overlaps(other) for other in obstacles))
            if best is None or rank > best[0]:
                best = (rank, label.xyann)
            if rank == 3:
                break
        label.xyann = best[1] if best else (dx, dy)
        placed.append(text_box(label, renderer))


def write_menu(menu: dict, output: Path) -> None:
    """menu.json, menu.md and menu.png in `output`."""
    write_files(output, menu, ("menu.json", "menu.md", "menu.png"), render_menu_markdown, write_menu_chart)
