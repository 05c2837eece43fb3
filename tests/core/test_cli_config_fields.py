"""The option dataclasses' machinery (`sst2dist.config_fields`): shared checks, messages naming the flag, values
from flags, and the Click options and argparse arguments generated from the fields."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from sst2dist.bench.measure import BenchError
from sst2dist.bench.settings import BenchSettings
from sst2dist.cli import main
from sst2dist.config_fields import (
    OptionError,
    Options,
    add_arguments,
    click_options,
    in_range,
    nested,
    non_negative,
    option,
    positive,
    positive_ints,
    split_commas,
)
from sst2dist.export.options import ExportOptions
from sst2dist.predict.options import PredictOptions
from sst2dist.serve.limits import ServeLimits, ServeOptions, default_workers


def parse_sizes(text: str, flag: str) -> list[int]:
    return [int(part) for part in text.split(",")]


@dataclass(frozen=True)
class Inner(Options):
    queue: int = option(4, "Most waiting.", checks=[positive])
    workers: int = option(1, "Workers (default: two).", checks=[positive], cli_default=lambda: 2)


@dataclass(frozen=True)
class Example(Options):
    count: int = option(3, "How many.", checks=[positive])
    ratio: float = option(0.5, "A share.", checks=[in_range(0, 1, high_open=True)])
    mode: str = option("fast", "How.", choices=("fast", "slow"))
    name_: str | None = option(None, "A name (default: none).", flags=("--name", "--alias"))
    sizes: tuple[int, ...] = option((1, 8), "Sizes.", parse=parse_sizes)
    names: list[str] | None = option(None, "Names.", parse=split_commas)
    inner: Inner = nested(Inner)
    wait: float = option(0.0, "Seconds.", checks=[non_negative])
    verbose: bool = option(False, "Talk.")
    colour: bool = option(True, "Colour.")
    log: bool = option(False, "Log.", negatable=True, show_default=True)
    data: str = option("hub", "Data. Default: the hub.", show_default=False)


@click.command()
@click_options(Example)
def command(**flags) -> None:
    click.echo(repr(Example.from_flags(**flags)))


def test_shared_checks() -> None:
    assert positive(1) is None and positive(0) == "must be >= 1" and positive(0.0) == "must be > 0"
    assert non_negative(0) is None and non_negative(-1) == "must be >= 0"
    assert in_range(14, 21)(21) is None and in_range(14, 21)(9) == "must be in [14, 21]"
    assert in_range(0, 1, high_open=True)(1) == "must be in [0, 1)"
    assert positive_ints([1, 8]) is None and positive_ints([]) == positive_ints([0, 8]) == "must be whole numbers >= 1"
    assert split_commas(" a, b,,", "--names") == ["a", "b"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"count": 0}, "--count must be >= 1, got 0"),
        ({"ratio": 1.0}, "--ratio must be in [0, 1), got 1.0"),
        ({"mode": "medium"}, "--mode must be one of fast, slow, got 'medium'"),
        ({"wait": -1}, "--wait must be >= 0, got -1"),
    ],
)
def test_construction_checks_each_field(values: dict, message: str) -> None:
    with pytest.raises(OptionError) as caught:
        Example(**values)
    assert str(caught.value) == message


def test_nested_checks_name_their_flag() -> None:
    with pytest.raises(OptionError, match=r"^--queue must be >= 1, got 0$"):
        Inner(queue=0)


def test_the_error_class_is_the_dataclass_s() -> None:
    class StageError(ValueError):
        pass

    @dataclass
    class Stage(Options):
        error = StageError
        count: int = option(1, "How many.", checks=[positive])

    with pytest.raises(StageError, match="--count must be >= 1"):
        Stage(count=0)
    with pytest.raises(StageError, match="--count must be >= 1, got -2"):
        Stage.check_value("count", -2)


def test_generated_help_flags_and_defaults() -> None:
    params = {param.name: param for param in command.params}
    assert list(params) == ["count", "ratio", "mode", "name_", "sizes", "names", "queue", "workers", "wait"] + [
        "verbose",
        "colour",
        "log",
        "data",
    ]
    assert params["name_"].opts == ["--name", "--alias"]
    assert params["colour"].secondary_opts == ["--no-colour"] and params["log"].secondary_opts == ["--no-log"]
    assert params["verbose"].secondary_opts == []
    assert isinstance(params["mode"].type, click.Choice)
    assert params["count"].type is click.INT and params["ratio"].type is click.FLOAT
    help_text = CliRunner().invoke(command, ["--help"], terminal_width=200).output
    assert "--count INTEGER" in help_text and "How many.  [default: 3]" in help_text
    assert "Sizes.  [default: 1,8]" in help_text
    assert "Workers (default: two).\n" in help_text  # a command-line default shows no library default
    assert "Data. Default: the hub.\n" in help_text
    assert "--log / --no-log" in help_text and "Log.  [default: no-log]" in help_text
    assert "Talk.\n" in help_text and "Colour.\n" in help_text


def test_values_from_flags() -> None:
    result = CliRunner().invoke(command, [])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == repr(Example(sizes=[1, 8], inner=Inner(workers=2)))  # the shown default, parsed
    args = ["--sizes", "2,4", "--names", "a,b", "--queue", "9", "--workers", "3", "--verbose", "--no-colour"]
    result = CliRunner().invoke(command, [*args, "--name", "x", "--data", "local"])
    want = Example(
        sizes=[2, 4], names=["a", "b"], inner=Inner(9, 3), verbose=True, colour=False, name_="x", data="local"
    )
    assert result.output.strip() == repr(want)


def test_a_bad_flag_value_raises_the_option_error() -> None:
    result = CliRunner().invoke(command, ["--count", "0"])
    assert isinstance(result.exception, OptionError) and str(result.exception) == "--count must be >= 1, got 0"


def test_only_and_exclude_place_flags() -> None:
    @click.command()
    @click_options(Example, only=("wait", "count"))
    @click.option("--between")
    @click_options(Example, exclude=("wait", "count", "inner"))
    def split(**flags) -> None:
        pass

    names = [param.name for param in split.params]
    assert names[:3] == ["wait", "count", "between"] and "queue" not in names and names[-1] == "data"


def test_argparse_arguments() -> None:
    parser = add_arguments(argparse.ArgumentParser(), Inner)
    assert vars(parser.parse_args([])) == {"queue": 4, "workers": 1}
    assert vars(parser.parse_args(["--queue", "2"]))["queue"] == 2
    assert "Most waiting. (default: 4)" in parser.format_help()

    @dataclass
    class Flags(Options):
        mode: str = option("fast", "How.", choices=("fast", "slow"))
        colour: bool = option(True, "Colour.")

    parser = add_arguments(argparse.ArgumentParser(), Flags)
    assert vars(parser.parse_args(["--no-colour", "--mode", "slow"])) == {"mode": "slow", "colour": False}
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "medium"])


# --- each command's options ---


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"opset": 9}, "--opset must be in [14, 21], got 9"),
        ({"optimize": "O9"}, "--optimize must be one of O1, O2, O3, none, got 'O9'"),
        ({"quantize": "int4"}, "--quantize must be one of dynamic, static, none, got 'int4'"),
        ({"max_accuracy_drop": -1}, "--max-accuracy-drop must be >= 0, got -1"),
        ({"max_verify_samples": 0}, "--max-verify-samples must be >= 1, got 0"),
    ],
)
def test_export_options(values: dict, message: str) -> None:
    with pytest.raises(OptionError) as caught:
        ExportOptions(**values)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"threads": [0]}, "--threads must be whole numbers >= 1, got [0]"),
        ({"batch_sizes": ()}, "--batch-sizes must be whole numbers >= 1, got []"),
        ({"max_samples": 0}, "--max-samples must be >= 1, got 0"),
        ({"latency_samples": -1}, "--latency-samples must be >= 1, got -1"),
        ({"warmup": -1}, "--warmup must be >= 0, got -1"),
    ],
)
def test_bench_settings(values: dict, message: str) -> None:
    with pytest.raises(BenchError) as caught:
        BenchSettings(bundle="b", **values)
    assert str(caught.value) == message


def test_bench_flags_parse_their_lists() -> None:
    flags = {"threads": "2,1,2", "batch_sizes": "1,8,32", "backends": "ort-fp32, ort-int8", "data": None}
    settings = BenchSettings.from_flags(bundle="b", **flags)
    assert (settings.threads, settings.batch_sizes, settings.backends) == ([1, 2], [1, 8, 32], ["ort-fp32", "ort-int8"])
    assert settings.data == BenchSettings("b").data
    with pytest.raises(BenchError, match="--batch-sizes takes comma-separated whole numbers like 1,8,32, got '8,x'"):
        BenchSettings.from_flags(bundle="b", batch_sizes="8,x")


@pytest.mark.parametrize(
    ("options", "values", "message"),
    [
        (ServeLimits, {"max_batch_size": 0}, "--max-batch-size must be >= 1, got 0"),
        (ServeLimits, {"max_wait_ms": -0.5}, "--max-wait-ms must be >= 0, got -0.5"),
        (ServeLimits, {"workers": 0}, "--workers must be >= 1, got 0"),
        (ServeOptions, {"threads": 0}, "--threads must be >= 1, got 0"),
        (PredictOptions, {"batch_size": 0}, "--batch-size must be >= 1, got 0"),
        (PredictOptions, {"fmt": "xml"}, "--format must be one of text, jsonl, csv, tsv, got 'xml'"),
    ],
)
def test_serve_and_predict_options(options: type, values: dict, message: str) -> None:
    with pytest.raises(OptionError) as caught:
        options(**values)
    assert str(caught.value) == message


def test_serve_workers_default_to_one_per_core_on_the_command_line_only() -> None:
    assert ServeOptions().limits == ServeLimits() and ServeLimits().workers == 1
    options = ServeOptions.from_flags(workers=None, max_queue=8, port=9000)
    assert options.limits == ServeLimits(max_queue=8, workers=default_workers()) and options.port == 9000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["export-onnx", "model", "-o", "out", "--max-verify-samples", "0"],
            "--max-verify-samples must be >= 1, got 0",
        ),
        (["bench", "--bundle", "b", "--warmup", "-1"], "--warmup must be >= 0, got -1"),
        (["serve", "b", "--max-queue", "0"], "--max-queue must be >= 1, got 0"),
        (["predict", "b", "text", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    ],
)
def test_a_bad_value_exits_1_naming_the_flag(args: list[str], message: str, tmp_path: Path) -> None:
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=tmp_path) as folder:
        result = runner.invoke(main, args)
        assert list(Path(folder).iterdir()) == [], "nothing is written"
    assert result.exit_code == 1 and f"Error: {message}" in result.output, result.output
