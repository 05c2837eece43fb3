"""How bench and menu results are shown and saved: terminal tables, Markdown reports, charts, JSON files.

Everything here reads a results dict built by `sst2dist.bench.run` or `sst2dist.bench.menu` and measures nothing.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

from sst2dist.atomic import atomic_open, atomic_path
from sst2dist.bench.anchors import PUBLISHED_NOTE

Table = tuple[list[str], list[list[str]]]


# --- shared pieces ----------------------------------------------------------------------------------------------


def times(ratio: float | None) -> str:
    return f"{ratio:.2f}x" if ratio is not None else "-"


def plain_table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    """Columns padded to their widest cell: the first `text_columns` left-aligned, the numbers right-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < text_columns else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def markdown_table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    aligns = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(aligns) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def cpu_line(cpu: dict) -> str:
    """The CPU a report comes from: model name, kind, acceleration flags and cores."""
    flags = ", ".join(flag for flag, present in cpu.get("flags", {}).items() if present) or "no AVX2/AVX-512/AMX"
    kind = f" [{cpu['kind']}]" if cpu.get("kind") else ""
    return f"CPU: {cpu.get('model') or 'unknown'}{kind}; {flags}; {cpu.get('usable_cpus')} usable CPUs"


def rounded(values: list[float] | None) -> str:
    return " / ".join(f"{v:.2f}" for v in values) if values else "unknown"


def write_files(output: Path, results: dict, names: tuple[str, str, str], markdown: Callable, chart: Callable) -> None:
    """The JSON, Markdown and PNG files `names`, each written to a temporary file and renamed into place."""
    json_name, markdown_name, chart_name = names
    output.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(output / chart_name, "the bench report") as path:
            chart(results, path)
    except ImportError:
        results["notes"].append(f"{chart_name} not written: matplotlib is not installed (pip install matplotlib)")
    with atomic_open(output / json_name, "the bench report") as handle:
        handle.write(json.dumps(results, indent=1) + "\n")
    with atomic_open(output / markdown_name, "the bench report") as handle:
        handle.write(markdown(results))


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --- the bench: one bundle against PyTorch ---------------------------------------------------------------------


def summary_table(results: dict) -> Table:
    """Accuracy and footprint, one row per backend; (x) is the value divided by the baseline's."""
    header = ["backend", "accuracy %", "vs base pts", "agree %", "file MB", "cold start s", "peak RSS MB"]
    rows = []
    for name, result in results["backends"].items():
        m, r = result["metrics"], result["vs_baseline"]
        rows.append(
            [
                name,
                f"{100 * m['accuracy']:.2f}",
                f"{m['accuracy_delta_points']:+.2f}",
                f"{100 * m['agreement_with_baseline']:.1f}",
                f"{m['file_size_mb']:.1f} ({times(r['file_size_mb'])})",
                f"{m['cold_start_seconds']:.2f} ({times(r['cold_start_seconds'])})",
                f"{m['peak_rss_mb']:.0f} ({times(r['peak_rss_mb'])})",
            ]
        )
    return header, rows


def speed_table(results: dict, threads: str) -> Table:
    """Batch-1 latency (ms, tokenization included), its split, speedup, and throughput per batch size, in input
    order and sorted by length."""
    batch_sizes = [str(b) for b in results["settings"]["batch_sizes"]]
    header = ["backend", "p50 ms", "p90 ms", "p99 ms", "mean ms", "tok p50", "model p50", "speedup"]
    for b in batch_sizes:
        header += [f"bs{b} sent/s"] + ([f"bs{b} sorted"] if b != "1" else [])
    rows = []
    for name, result in results["backends"].items():
        m, r = result["metrics"]["threads"][threads], result["vs_baseline"]["threads"][threads]
        total = m["latency_ms"]["total"]
        speedup = 1 / r["latency_ms"]["total"]["p50"] if r["latency_ms"]["total"]["p50"] else None
        row = [name, *(f"{total[k]:.2f}" for k in ("p50", "p90", "p99", "mean"))]
        row += [f"{m['latency_ms']['tokenize']['p50']:.2f}", f"{m['latency_ms']['model']['p50']:.2f}", times(speedup)]
        for b in batch_sizes:
            for key in ("throughput_sentences_per_s", "sorted_throughput_sentences_per_s"):
                if b in m.get(key, {}):
                    row.append(f"{m[key][b]:.0f} ({times(r[key][b])})")
        rows.append(row)
    return header, rows


def sorted_gain_line(results: dict, threads: str) -> str | None:
    """Sorted batches at the largest batch size against batch 1, per backend (both from this run)."""
    widest = str(max(results["settings"]["batch_sizes"]))
    gains = []
    for name, result in results["backends"].items():
        m = result["metrics"]["threads"][threads]
        one = m["throughput_sentences_per_s"].get("1")
        if one and widest in m.get("sorted_throughput_sentences_per_s", {}):
            gains.append(f"{name} {times(m['sorted_throughput_sentences_per_s'][widest] / one)}")
    return f"Sorted batch {widest} vs batch 1, {threads} thread(s): {', '.join(gains)}" if gains else None


def peak_line(results: dict) -> str | None:
    peak = results.get("peak_estimate")
    if not peak:
        return None
    where = (
        f"Best throughput: {peak['backend']} at batch {peak['batch_size']} ({peak.get('order', 'input')} order), "
        f"{peak['threads']} threads: {peak['sentences_per_s']:.0f} sentences/s, "
        f"{peak['model_gflops_per_s']:.1f} GFLOP/s in the model"
    )
    if peak.get("unknown"):
        return f"{where}; share of peak unknown: {peak['unknown']}."
    shares = ", ".join(
        f"{100 * p['fraction']:.1f}% of {label} peak ({p['peak_gflops_per_s']:.0f} GFLOP/s)"
        for label, p in peak["peaks"].items()
    )
    clock = f" at {peak['clock_mhz']:.0f} MHz ({peak['clock_source']})" if peak.get("clock_mhz") else ""
    return f"{where} = {shares}{clock}."


def extra_lines(results: dict) -> list[str]:
    threads = list(results["backends"][results["baseline"]]["metrics"]["threads"])
    lines = [sorted_gain_line(results, t) for t in threads] + [peak_line(results), *results["notes"]]
    return [line for line in lines if line]


def render_terminal(results: dict) -> str:
    data = results["dataset"]
    parts = [
        cpu_line(results["environment"]["cpu"]),
        f"Accuracy on {data['sentences']} SST-2 validation sentences; (x) = value / {results['baseline']}",
        plain_table(*summary_table(results)),
    ]
    for threads in results["backends"][results["baseline"]]["metrics"]["threads"]:
        parts += [
            "",
            f"{threads} thread(s): batch-1 latency over {data['latency_sentences']} sentences "
            f"(tokenization included), throughput over {data['sentences']} (input order, and sorted by length)",
            plain_table(*speed_table(results, threads)),
        ]
    return "\n".join([*parts, "", *extra_lines(results)])


def default_variant_lines(bundle: dict) -> list[str]:
    """Which variant `serve`, `predict` and `Classifier` run by default on this CPU, and why."""
    choice = bundle.get("default_variant")
    if not choice:
        return []
    variant = f"`{choice['variant']}`" if choice["variant"] else "chosen at load"
    return [f"Default variant on this CPU (serve, predict, `Classifier`): {variant} — {choice['detail']}.", ""]


def render_markdown(results: dict) -> str:
    data, env = results["dataset"], results["environment"]
    lines = [
        "# sst2dist bench",
        "",
        f"{results['created']}, bundle `{results['bundle']['path']}`, data `{data['data']}` "
        f"({data['sentences']} validation sentences). Baseline: **{results['baseline']}**; "
        "`(x)` is each figure divided by the baseline's from this same run.",
        "",
        f"{cpu_line(env['cpu'])}.",
        "",
        *default_variant_lines(results["bundle"]),
        "## Accuracy and footprint",
        "",
        markdown_table(*summary_table(results)),
    ]
    for threads in results["backends"][results["baseline"]]["metrics"]["threads"]:
        lines += [
            "",
            f"## Speed, {threads} thread(s)",
            "",
            f"Latency: batch 1 over {data['latency_sentences']} real sentences after warm-up, tokenization "
            "included (`tok`/`model` split the p50). Throughput: all sentences, batches padded to their longest "
            "member, in input order (`sent/s`) and sorted by length first (`sorted`).",
            "",
            markdown_table(*speed_table(results, threads)),
        ]
    extra = extra_lines(results)
    if extra:
        lines += ["", "## Notes", "", *(f"- {line}" for line in extra)]
    return "\n".join(lines + ["", "![latency and throughput](chart.png)", "", *environment_lines(results)])


def environment_lines(results: dict) -> list[str]:
    env = results["environment"]
    cpu = env["cpu"]
    flags = ", ".join(flag for flag, present in cpu["flags"].items() if present) or "none"
    packages = ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v)
    return [
        "## Environment",
        "",
        f"- CPU: {cpu['model']} ({cpu.get('kind', 'kind not recorded')}), {cpu['mhz']} MHz, {cpu['usable_cpus']} "
        f"usable of {cpu['logical_cpus']} logical CPUs, {cpu['threads_per_core']} thread(s) per core",
        f"- CPU flags: {flags}",
        f"- Threads: {', '.join(map(str, env['threads']['measured']))}; onnxruntime {env['threads']['onnxruntime']}; "
        f"torch interop threads {env['threads']['torch_interop']}; env {env['threads']['env']}",
        f"- Load average (1/5/15 min) before: {rounded(env.get('load_average_before'))}, "
        f"after: {rounded(env['load_average'])}",
        f"- {env['os']}, Python {env['python']}; {packages}",
        f"- Duration: {results['duration_seconds']:.0f} s",
        "",
    ]


def write_chart(results: dict, path: Path) -> None:
    plt = pyplot()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    names = list(results["backends"])
    top = str(max(results["settings"]["threads"]))
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    latencies = [results["backends"][n]["raw"]["threads"][top]["latency_ms"]["total"] for n in names]
    left.boxplot(latencies, whis=(1, 99), showfliers=False)
    left.set_xticks(range(1, len(names) + 1), names, rotation=20)
    left.set_yscale("log")
    left.yaxis.set_major_formatter(ScalarFormatter())
    left.yaxis.set_minor_formatter(NullFormatter())
    left.set_ylabel("ms per sentence, log scale (tokenization included)")
    left.set_title(f"Batch-1 latency, {top} thread(s) (whiskers p1-p99)")
    left.grid(axis="y", alpha=0.3)
    plot_throughput(right, results)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=110)
    plt.close(figure)


def plot_throughput(axes, results: dict) -> None:
    styles = ["-", "--", ":", "-."]
    for index, name in enumerate(results["backends"]):
        for t_index, (threads, figures) in enumerate(results["backends"][name]["metrics"]["threads"].items()):
            for key, marker, suffix in (("", "o", ""), ("sorted_", "^", ", sorted")):
                speed = figures.get(f"{key}throughput_sentences_per_s", {})
                label = f"{name}, {threads} thr{suffix}"
                x, y = [int(b) for b in speed], list(speed.values())
                axes.plot(x, y, styles[t_index % 4], marker=marker, color=f"C{index}", label=label)
    batch_sizes = results["settings"]["batch_sizes"]
    axes.set_xscale("log", base=2)
    axes.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
    axes.set_xlabel("batch size")
    axes.set_ylabel("sentences / s")
    axes.set_title("Throughput (o input order, ^ sorted by length)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=6)


def write_outputs(results: dict, output: Path) -> None:
    """results.json, report.md and chart.png in `output`."""
    write_files(output, results, ("results.json", "report.md", "chart.png"), render_markdown, write_chart)


# --- the menu: accuracy against latency across models -----------------------------------------------------------


def menu_table(menu: dict) -> Table:
    """One row per model and variant, fastest batch-1 p50 first; a class column when the menu has a reference."""
    batch = menu["settings"]["batch_size"]
    classes = bool(menu.get("class_reference"))
    header = ["model", "variant", "accuracy %", "p50 ms", "p90 ms", "x fastest"] + ["class"] * classes
    rows = [
        [
            row["model"],
            row["variant"] + ("" if row["passed_gate"] else " (failed gate)"),
            f"{100 * row['accuracy']:.2f}" + (" (published)" if row.get("anchor") else ""),
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


def class_label(cell: dict) -> str:
    return f"{cell['model']} {cell['variant']} {100 * cell['accuracy']:.2f} % ({times(cell['class'])})"


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
    header = ["anchor", "shape (untrained, timed here)", "SST-2 accuracy %", "source"]
    rows = [
        [
            name,
            f"{a['architecture']} {a['layers']}x{a['hidden']}, {a['heads']} heads, FFN {a['ffn']}",
            f"{a['accuracy']:.1f}",
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
        f"Accuracy on {data['sentences']} SST-2 validation sentences (from the sorted batch-{settings['batch_size']} "
        f"pass); batch-1 latency over {data['latency_sentences']} sentences, tokenization included, all models "
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
        "accurate variant that passed the gate at or under the bound. Stock: the anchors whose fastest variant falls "
        f"in the class (above the previous bound), at their published accuracy ({PUBLISHED_NOTE}).",
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
        "like a bundle (fp32 and the same dynamic int8) and timed in this run; placed at their published accuracy.",
        "",
        markdown_table(header, rows, text_columns=4),
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
    for row in menu["rows"]:
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
    axes.set_ylabel("SST-2 dev accuracy, %")
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
        return f"{text} ({row['anchor']['accuracy']:.1f}, published)"
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
    text = f"Anchors (untrained stock shapes timed here), SST-2 accuracy {PUBLISHED_NOTE}: {sources}."
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
