"""The `sst2dist` command line: thin Click wrappers, each parses options and calls one library function.

Each command's flags are generated (`config_fields.click_options`) from the options dataclass its library function
takes: ExportOptions, BenchSettings, ServeOptions and ServeLimits, PredictOptions; the command builds it with
`from_flags`, which also checks it. Stage modules are imported inside each command so that `serve` and `predict`
never import torch.
"""

from __future__ import annotations

import click

from sst2dist import __version__
from sst2dist.bench.settings import BenchSettings
from sst2dist.config_fields import click_options
from sst2dist.distill.augment_options import AugmentOptions
from sst2dist.export.options import ExportOptions
from sst2dist.predict.options import PredictOptions
from sst2dist.predict.ray_options import RayPredictOptions
from sst2dist.prune.options import PruneOptions
from sst2dist.serve.limits import ServeLimits, ServeOptions


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sst2dist")
def main() -> None:
    """Fine-tune BERT-family models on SST-2, export verified ONNX bundles, benchmark and serve them on CPU.

    \b
    Example, the whole chain on the real data:
      accelerate launch -m sst2dist.train --data ../shared/data/sst2 --output-dir runs/minilm
      sst2dist export-onnx runs/minilm/model --output export/minilm --data ../shared/data/sst2
      sst2dist bench --model runs/minilm/model --bundle export/minilm --data ../shared/data/sst2
      sst2dist serve export/minilm
    """


# --- train ---


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.option("--num-processes", type=int, default=1, show_default=True, help="Training processes on this machine.")
@click.pass_context
def train(ctx: click.Context, num_processes: int) -> None:
    """Fine-tune a BERT-family model on SST-2; every other option goes to `python -m sst2dist.train`.

    \b
    Examples:
      sst2dist train --data ../shared/data/sst2 --output-dir runs/minilm
      sst2dist train --num-processes 2 --data ../shared/data/sst2 --output-dir runs/minilm-2proc
    \b
    With --num-processes N > 1 it runs N processes through torchrun (gloo on a CPU), which
    `accelerate launch --cpu --num_processes N` does not do. Trainer options follow.
    """
    from sst2dist.train import config as train_config
    from sst2dist.train import loop as trainer

    args = list(ctx.args)
    if "-h" in args or "--help" in args:
        click.echo(ctx.get_help())
        click.echo("\n" + train_config.build_parser().format_help())
        return
    if num_processes > 1:
        code = trainer.launch_processes(num_processes, args)
        if code:
            raise click.ClickException(f"training failed in one of the {num_processes} processes (exit {code})")
        return
    try:
        trainer.train(train_config.parse_config(args))
    except (ValueError, trainer.NonFiniteLossError) as err:  # ConfigError, DataError, ...
        raise click.ClickException(str(err)) from err


# --- augment ---


@main.command()
@click.option("--data", required=True, help="SST-2 hub id or local folder to augment (e.g. ../shared/data/sst2).")
@click.option("--output", "-o", required=True, help="Folder to write: train.tsv, dev.tsv, teacher-logits.npz.")
@click_options(AugmentOptions)
def augment(data: str, output: str, **flags) -> None:
    """Make teacher-labelled training sentences by swapping words for their embedding neighbours (TinyBERT).

    \b
    Example (then distil from the folder, teacher logits only):
      sst2dist augment --data ../shared/data/sst2 --output runs/sst2-aug --teacher runs/teacher/model \\
        --teacher-logits packaged:all-mpnet-base-v2-sst2
      accelerate launch -m sst2dist.train --data runs/sst2-aug --teacher runs/sst2-aug/teacher-logits.npz \\
        --distill-alpha 0 --epochs 1 --output-dir runs/l6-aug
    """
    from sst2dist.distill import augment as augmenting

    try:
        summary = augmenting.augment(AugmentOptions(data, output, **AugmentOptions.flag_values(**flags)))
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"wrote {output}: {augmenting.describe(summary)}")


# --- export-onnx ---


@main.command("export-onnx")
@click.argument("model_dir", type=click.Path(path_type=str))
@click.option("--output", "-o", required=True, help="Bundle folder to write (must be new or empty, or use --force).")
@click_options(ExportOptions)
def export_onnx(model_dir: str, output: str, **flags) -> None:
    """Export MODEL_DIR to a verified ONNX bundle: fp32, optimized, int8 (and static-int8, OpenVINO) variants.

    Every variant is checked against PyTorch on the validation sentences of --data (SST-2 by default, or your own
    data of 2 or more labels, scored by label name; macro-F1 is reported too with more than 2): the exact ones by
    their logits, the lossy ones (int8, static-int8, openvino-bf16, openvino-int8) by --max-accuracy-drop and
    --min-label-agreement. A failed fp32/optimized variant stops the export and nothing is written; so does a failed
    int8 variant unless --keep-failed; a failed OpenVINO variant is kept, marked failed, and never chosen.

    \b
    Example:
      sst2dist export-onnx runs/minilm/model --output export/minilm --data ../shared/data/sst2
    """
    from sst2dist.export.bundle import export_bundle

    try:
        manifest = export_bundle(model_dir, output, ExportOptions.from_flags(**flags))
    except ValueError as err:  # OptionError, ExportError, DataError: the message says what to fix
        raise click.ClickException(str(err)) from err
    click.echo(f"wrote {output} (default variant: {manifest['default_variant']})")
    for name, entry in manifest["variants"].items():
        result = entry["verification"]
        status = "passed" if entry["passed"] else "FAILED"
        f1 = f"  macro-F1 {100 * result['macro_f1']:.2f}%" if "macro_f1" in result else ""
        click.echo(
            f"  {name:<13} {entry['size_bytes'] / 1e6:7.1f} MB  max|Δlogit| {result['max_abs_logit_diff']:.2e}  "
            f"agreement {100 * result['label_agreement']:6.2f}%  accuracy {100 * result['accuracy']:.2f}%{f1}  {status}"
        )


# --- prune ---


@main.command("prune")
@click.argument("model_dir", type=click.Path(path_type=str))
@click.option(
    "--output", "-o", required=True, help="Folder to write the pruned model to (new or empty; a pruned one: --force)."
)
@click_options(PruneOptions)
def prune_command(model_dir: str, output: str, **flags) -> None:
    """Prune MODEL_DIR's attention heads and FFN neurons down to a fraction of its encoder FLOPs (BERT, MPNet).

    Importance is the Fisher information of head and neuron masks on training sentences (Kwon et al. 2022); the
    least important per FLOP go first. The pruned folder loads with `--model` in training and exports with
    export-onnx; recover its accuracy by distilling from MODEL_DIR (docs/prune.md).

    \b
    Example:
      sst2dist prune runs/teacher/model --output runs/pruned-50/model --cost 0.5 --data ../shared/data/sst2
      sst2dist export-onnx runs/pruned-50/model --output export/pruned-50 --data ../shared/data/sst2
    """
    from sst2dist.prune.run import prune

    if flags["cost"] is None:
        raise click.UsageError("give --cost F, the fraction of the source's encoder FLOPs to keep (0 < F <= 1)")
    try:
        summary = prune(model_dir, output, PruneOptions.from_flags(**flags))
    except ValueError as err:  # OptionError, PruneError, DataError, ModelNotFoundError
        raise click.ClickException(str(err)) from err
    click.echo(
        f"wrote {output}: {summary['cost']:.3f} of the encoder FLOPs (target {summary['cost_target']}), "
        f"{sum(summary['heads_kept'])} heads and {sum(summary['neurons_kept'])} FFN neurons kept"
    )


# --- bench ---


@main.command()
@click_options(BenchSettings, only=("model", "bundle"))
@click.option(
    "--menu",
    multiple=True,
    metavar="NAME=BUNDLE_DIR",
    help="Instead of --bundle: compare models, every variant of each bundle (repeatable): accuracy, batch-1 "
    "latency, sorted-batch throughput, size. Writes menu.json, menu.md and menu.png. No PyTorch: onnxruntime, "
    "and OpenVINO where installed.",
)
@click.option(
    "--anchors",
    is_flag=True,
    help="With --menu: also time untrained models of the stock shapes (BERT-base, DistilBERT, MiniLM-L12/L6-H384, "
    "BERT-small; exported with every variant, built once and cached) through each variant the bundles are timed "
    "in, and plot their exact variants at their published full-precision SST-2 accuracy (test figures marked).",
)
@click.option(
    "--class-reference",
    default="l6",
    show_default=True,
    metavar="NAME",
    help="With --menu: the entry whose fp32 batch-1 p50 is 1x in the latency-class column and table.",
)
@click_options(BenchSettings, exclude=("model", "bundle"))
def bench(
    model: str | None, bundle: str | None, menu: tuple[str, ...], anchors: bool, class_reference: str, **flags
) -> None:
    """Benchmark PyTorch against every ONNX variant of a bundle, side by side on the validation split of --data.

    --data is SST-2 by default, or your own data of 2 or more labels (--text-column, --label-column, --labels, as in
    training); accuracy scores labels by name, and a model trained on other labels is refused.

    Writes results.json, report.md and chart.png to --output and prints the table. With --menu, compares
    several bundles instead (accuracy against latency) and writes menu.json, menu.md and menu.png.

    \b
    Example:
      sst2dist bench --model runs/minilm/model --bundle export/minilm --data ../shared/data/sst2
      sst2dist bench --bundle export/minilm --backends ort-fp32,ort-int8 --threads 2 --data ../shared/data/sst2
      sst2dist bench --menu teacher=export/teacher --menu L6=export/l6 --menu L3=export/l3 \\
          --data ../shared/data/sst2 --output 'bench/results/{cpu}/menu'
    """
    from sst2dist.bench.report import render_terminal, wrote_line
    from sst2dist.bench.run import run_bench

    if bool(bundle) == bool(menu):
        raise click.UsageError("give --bundle BUNDLE_DIR, or --menu NAME=BUNDLE_DIR (repeatable), not both")
    if anchors and not menu:
        raise click.UsageError("--anchors goes with --menu: add --menu NAME=BUNDLE_DIR for each bundle to compare")
    try:
        if menu:
            bench_menu(menu, model, flags | {"anchors": anchors, "class_reference": class_reference})
            return
        settings = BenchSettings.from_flags(bundle=bundle, model=model, **flags)
        results = run_bench(settings)
    except ValueError as err:  # BenchError, BundleError, DataError, ModelNotFoundError
        raise click.ClickException(str(err)) from err
    click.echo(render_terminal(results))
    click.echo("\n" + wrote_line(results, settings.output))


def bench_menu(items: tuple[str, ...], model: str | None, flags: dict) -> None:
    """`sst2dist bench --menu ...`: every variant of several bundles, in one run, at the largest thread count and
    batch size asked for."""
    from sst2dist.bench.menu import MenuSettings, parse_menu_items, run_menu
    from sst2dist.bench.menu_report import render_menu_terminal
    from sst2dist.bench.report import wrote_line

    if model is not None:
        raise click.UsageError("--menu measures bundles only (onnxruntime): drop --model")
    menu_only = {name: flags.pop(name) for name in ("anchors", "class_reference")}
    values = BenchSettings.flag_values(**flags)
    if values.pop("full", False):
        raise click.UsageError("--full goes with --bundle: the menu times every variant at one thread count already")
    threads, sizes = values.pop("threads", None), values.pop("batch_sizes", None)
    settings = MenuSettings(
        bundles=parse_menu_items(items),
        threads=max(threads) if threads else None,
        batch_size=max(sizes) if sizes else MenuSettings.batch_size,
        **values,
        **menu_only,
    )
    menu = run_menu(settings)
    click.echo(render_menu_terminal(menu))
    click.echo("\n" + wrote_line(menu, settings.output))


# --- serve / predict ---


@main.command()
@click.argument("bundle")
@click_options(ServeOptions, only=("host", "port", "variant"))
@click_options(ServeLimits, only=("workers",))
@click_options(ServeOptions, only=("threads",))
@click_options(ServeLimits, exclude=("workers",))
@click_options(ServeOptions, only=("log_level", "access_log", "api_key"))
def serve(bundle: str, **flags) -> None:
    """Serve a bundle over HTTP: POST /predict (TEI style) and POST / (Hugging Face Inference API).

    Also GET /health, /ready, /metrics (Prometheus), /info, and the OpenAPI docs at /docs.

    \b
    Example:
      sst2dist serve export/minilm --port 8080
      curl -s localhost:8080/predict -H 'Content-Type: application/json' -d '{"inputs": "a gripping, funny film"}'
    """
    import logging

    from sst2dist.serve import serve as run_server

    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    try:
        run_server(bundle, ServeOptions.from_flags(**flags))
    except ValueError as err:  # OptionError, BundleError
        raise click.ClickException(str(err)) from err


@main.command()
@click.argument("bundle")
@click.argument("texts", nargs=-1)
@click_options(PredictOptions)
def predict(bundle: str, texts: tuple[str, ...], **flags) -> None:
    """Classify texts with a bundle, writing JSONL rows {"line", "id", "text", "label", "score", "scores"}.

    \b
    Examples:
      sst2dist predict export/minilm "a gripping, funny film" "a dull, lifeless mess"
      sst2dist predict export/minilm --input reviews.csv --column review --output predictions.jsonl
      cut -f1 ../shared/data/sst2/dev.tsv | tail -n +2 | sst2dist predict export/minilm
    """
    import sys

    from sst2dist.predict.run import run_predict
    from sst2dist.runtime import load_classifier
    from sst2dist.variant_choice import workload_for

    if not texts and not flags["input_path"] and sys.stdin.isatty():
        raise click.UsageError("give texts as arguments, --input FILE, or pipe text to stdin")
    try:
        options = PredictOptions.from_flags(**flags)
        classifier = load_classifier(bundle, options.variant, options.threads, workload_for(options.batch_size))
        summary = run_predict(classifier, options, texts=texts)
    except ValueError as err:  # OptionError, BadLine, BundleError, unreadable input
        raise click.ClickException(f"{err}; nothing was written" if flags["output"] else str(err)) from err
    if summary.skipped:
        shown = "; ".join(str(bad) for bad in summary.skipped[:5])
        more = f" (and {len(summary.skipped) - 5} more)" if len(summary.skipped) > 5 else ""
        click.echo(f"skipped {len(summary.skipped)} bad line(s): {shown}{more}", err=True)
    if flags["output"]:
        click.echo(f"wrote {summary.written} predictions to {flags['output']}", err=True)


@main.command("predict-ray")
@click.argument("bundle")
@click.option(
    "--input", "input_path", required=True, help="File, folder or glob to classify (any path Ray Data reads)."
)
@click.option("--output", "-o", required=True, help="One .parquet or .jsonl file to write atomically, in input order.")
@click_options(RayPredictOptions)
def predict_ray(bundle: str, input_path: str, output: str, **flags) -> None:
    """Classify files with a bundle on Ray Data: a local Ray, or a cluster with --address (or $RAY_ADDRESS).

    Writes line, text, label, score and scores (one per label) per input line; needs `pip install "sst2dist[ray]"`.

    \b
    Examples:
      sst2dist predict-ray export/minilm --input reviews.jsonl --output predictions.parquet --num-cpus 2
      sst2dist predict-ray export/minilm --input 's3://bucket/reviews/*.parquet' --column review \\
          --output predictions.parquet --address ray://head:10001
    """
    try:
        from sst2dist.predict.ray_batch import run_predict_ray

        summary = run_predict_ray(bundle, input_path, output, RayPredictOptions.from_flags(**flags))
    except ImportError as err:
        raise click.ClickException(str(err)) from err
    except ValueError as err:  # OptionError, BadRow, BundleError, unreadable input
        raise click.ClickException(f"{err}; nothing was written") from err
    if summary.skipped:
        more = f" (and {len(summary.skipped) - 5} more)" if len(summary.skipped) > 5 else ""
        click.echo(f"skipped {len(summary.skipped)} bad line(s): {'; '.join(summary.skipped[:5])}{more}", err=True)
    click.echo(f"wrote {summary.written} predictions to {output}", err=True)


if __name__ == "__main__":
    main()
