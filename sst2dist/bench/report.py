"""How bench results are shown and saved: terminal tables, Markdown reports, charts, JSON files; the table and
file helpers `menu_report` shares.

Everything here reads a results dict built by `sst2dist.bench.run` and measures nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from sst2dist.atomic import atomic_open, atomic_path
from sst2dist.labels import data_name

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
    """The JSON, Markdown and PNG files `names`, each written to a temporary file and renamed into place;
    results["output_files"] lists those written (no chart without matplotlib)."""
    json_name, markdown_name, chart_name = names
    output.mkdir(parents=True, exist_ok=True)
    results["output_files"] = [json_name, markdown_name]
    try:
        with atomic_path(output / chart_name, "the bench report") as path:
            chart(results, path)
        results["output_files"].append(chart_name)
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
        f"Accuracy on {data['sentences']} {data_name(data['data'], data.get('label_names'))} validation sentences; "
        f"(x) = value / {results['baseline']}",
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
    """Which variant `serve` runs by default on this CPU (what export prints and the card states), and why."""
    choice = bundle.get("default_variant")
    if not choice:
        return []
    variant = f"`{choice['variant']}`" if choice["variant"] else "chosen at load"
    return [f"Default variant on this CPU (`serve`, micro-batched): {variant} — {choice['detail']}.", ""]


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
            "included; `tok p50` and `model p50` are the p50s of each part on its own (they need not add up to the "
            "total's p50). Throughput: all sentences, batches padded to their longest "
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


def wrote_line(results: dict, output: str) -> str:
    """What the command prints last: the files actually written and where."""
    files = results.get("output_files", [])
    return f"Wrote {', '.join(files[:-1])} and {files[-1]} to {output}" if len(files) > 1 else f"Wrote to {output}"


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
