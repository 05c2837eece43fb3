"""Every command's flags: names, order, defaults, types and which defaults `--help` shows, pinned so that moving
their declarations (into the option dataclasses) changes none of them."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from sst2dist.cli import main

# (flags, type or choices, "required"/"shown"/"multiple"/"nargs=-1"), in --help order
FLAGS = {
    "export-onnx": [
        ("model_dir", "path", "required"),
        ("--output -o", "text", "required"),
        ("--opset", "integer", "shown"),
        ("--optimize", "O1|O2|O3|none", "shown"),
        ("--quantize", "dynamic|static|none", "shown"),
        ("--openvino", "auto|on|off", "shown"),
        ("--data", "text", ""),
        ("--text-column", "text", "shown"),
        ("--label-column", "text", "shown"),
        ("--labels", "text", ""),
        ("--max-accuracy-drop", "float", "shown"),
        ("--min-label-agreement", "float", "shown"),
        ("--max-verify-samples", "integer", ""),
        ("--keep-failed", "boolean", ""),
        ("--force", "boolean", ""),
    ],
    "bench": [
        ("--model", "text", ""),
        ("--bundle", "text", ""),
        ("--menu", "text", "multiple"),
        ("--anchors", "boolean", ""),
        ("--class-reference", "text", "shown"),
        ("--data", "text", ""),
        ("--text-column", "text", "shown"),
        ("--label-column", "text", "shown"),
        ("--labels", "text", ""),
        ("--backends", "text", ""),
        ("--threads", "text", ""),
        ("--batch-sizes", "text", ""),
        ("--full", "boolean", ""),
        ("--output", "text", ""),
        ("--max-samples", "integer", ""),
        ("--latency-samples", "integer", ""),
        ("--warmup", "integer", "shown"),
        ("--progress --no-progress", "boolean", ""),
    ],
    "serve": [
        ("bundle", "text", "required"),
        ("--host", "text", "shown"),
        ("--port", "integer", "shown"),
        ("--variant", "text", ""),
        ("--workers", "integer", ""),
        ("--threads", "integer", ""),
        ("--max-batch-size", "integer", "shown"),
        ("--max-batch-tokens", "integer", "shown"),
        ("--max-wait-ms", "float", "shown"),
        ("--max-client-batch", "integer", "shown"),
        ("--max-payload", "integer", "shown"),
        ("--max-queue", "integer", "shown"),
        ("--grace-period", "float", "shown"),
        ("--log-level", "text", "shown"),
        ("--access-log --no-access-log", "boolean", "shown"),
        ("--api-key", "text", ""),
    ],
    "predict": [
        ("bundle", "text", "required"),
        ("texts", "text", "nargs=-1"),
        ("--input", "text", ""),
        ("--format", "text|jsonl|csv|tsv", ""),
        ("--field --column", "text", ""),
        ("--output", "text", ""),
        ("--variant", "text", ""),
        ("--threads", "integer", ""),
        ("--batch-size", "integer", "shown"),
        ("--skip-bad", "boolean", ""),
    ],
    "predict-ray": [
        ("bundle", "text", "required"),
        ("--input", "text", "required"),
        ("--output -o", "text", "required"),
        ("--format", "text|jsonl|csv|tsv|parquet", ""),
        ("--field --column", "text", ""),
        ("--address", "text", ""),
        ("--num-cpus", "integer", ""),
        ("--actors", "integer", ""),
        ("--threads-per-actor", "integer", "shown"),
        ("--variant", "text", ""),
        ("--batch-size", "integer", "shown"),
        ("--logits", "boolean", ""),
        ("--skip-bad", "boolean", ""),
    ],
    "augment": [
        ("--data", "text", "required"),
        ("--output -o", "text", "required"),
        ("--text-column", "text", "shown"),
        ("--label-column", "text", "shown"),
        ("--labels", "text", ""),
        ("--teacher", "text", ""),
        ("--teacher-logits", "text", ""),
        ("--scorer", "torch|onnx", ""),
        ("--embeddings", "text", "shown"),
        ("--variants", "integer", "shown"),
        ("--replace-prob", "float", "shown"),
        ("--neighbours", "integer", "shown"),
        ("--min-words", "integer", "shown"),
        ("--max-length", "integer", "shown"),
        ("--seed", "integer", "shown"),
        ("--force", "boolean", ""),
    ],
    "prune": [
        ("model_dir", "path", "required"),
        ("--output -o", "text", "required"),
        ("--cost", "float", ""),
        ("--data", "text", ""),
        ("--text-column", "text", "shown"),
        ("--label-column", "text", "shown"),
        ("--labels", "text", ""),
        ("--samples", "integer", "shown"),
        ("--batch-size", "integer", "shown"),
        ("--max-length", "integer", "shown"),
        ("--seed", "integer", "shown"),
        ("--force", "boolean", ""),
    ],
    "train": [("--num-processes", "integer", "shown")],
}

# The required arguments each command is given, and the values its function then receives.
REQUIRED = {
    "export-onnx": ["m", "-o", "o"],
    "bench": [],
    "serve": ["b"],
    "predict": ["b"],
    "predict-ray": ["b", "--input", "i", "-o", "o"],
    "augment": ["--data", "d", "-o", "o"],
    "prune": ["m", "-o", "o"],
    "train": [],
}
DEFAULTS = {
    "export-onnx": {
        "model_dir": "m",
        "output": "o",
        "opset": 18,
        "optimize": "O2",
        "quantize": "dynamic",
        "openvino": "auto",
        "data": None,
        "text_column": "sentence",
        "label_column": "label",
        "labels": None,
        "max_accuracy_drop": 0.5,
        "min_label_agreement": 98.0,
        "max_verify_samples": None,
        "keep_failed": False,
        "force": False,
    },
    "bench": {
        "model": None,
        "bundle": None,
        "menu": (),
        "anchors": False,
        "class_reference": "l6",
        "data": None,
        "text_column": "sentence",
        "label_column": "label",
        "labels": None,
        "backends": None,
        "threads": None,
        "batch_sizes": None,
        "full": False,
        "output": None,
        "max_samples": None,
        "latency_samples": None,
        "warmup": 20,
        "progress": True,
    },
    "serve": {
        "bundle": "b",
        "host": "127.0.0.1",
        "port": 8080,
        "variant": None,
        "workers": None,
        "threads": None,
        "max_batch_size": 32,
        "max_batch_tokens": 8192,
        "max_wait_ms": 0.0,
        "max_client_batch": 64,
        "max_payload": 1_000_000,
        "max_queue": 256,
        "grace_period": 30.0,
        "log_level": "info",
        "access_log": False,
        "api_key": None,
    },
    "predict": {
        "bundle": "b",
        "texts": (),
        "input_path": None,
        "fmt": None,
        "field_name": None,
        "output": None,
        "variant": None,
        "threads": None,
        "batch_size": 32,
        "skip_bad": False,
    },
    "predict-ray": {
        "bundle": "b",
        "input_path": "i",
        "output": "o",
        "fmt": None,
        "field_name": None,
        "address": None,
        "num_cpus": None,
        "actors": None,
        "threads_per_actor": 1,
        "variant": None,
        "batch_size": 32,
        "logits": False,
        "skip_bad": False,
    },
    "augment": {
        "data": "d",
        "output": "o",
        "text_column": "sentence",
        "label_column": "label",
        "labels": None,
        "teacher": None,
        "teacher_logits": None,
        "scorer": None,
        "embeddings": "packaged:all-MiniLM-L6-v2",
        "variants": 2,
        "replace_prob": 0.4,
        "neighbours": 15,
        "min_words": 4,
        "max_length": 128,
        "seed": 0,
        "force": False,
    },
    "prune": {
        "model_dir": "m",
        "output": "o",
        "cost": None,
        "data": None,
        "text_column": "sentence",
        "label_column": "label",
        "labels": None,
        "samples": 1536,
        "batch_size": 32,
        "max_length": 128,
        "seed": 0,
        "force": False,
    },
    "train": {"num_processes": 1},
}


def describe(param: click.Parameter) -> tuple[str, str, str]:
    flags = " ".join([*param.opts, *param.secondary_opts]) if isinstance(param, click.Option) else param.name
    choices = getattr(param.type, "choices", None)
    kind = "|".join(choices) if choices else param.type.name
    traits = [
        name
        for name, present in (
            ("required", param.required),
            ("multiple", getattr(param, "multiple", False)),
            ("shown", getattr(param, "show_default", None)),
            ("nargs=-1", param.nargs == -1),
        )
        if present
    ]
    return flags, kind, " ".join(traits)


def test_every_command_is_pinned() -> None:
    assert set(main.commands) == set(FLAGS)


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_flag_names_order_and_types(name: str) -> None:
    assert [describe(param) for param in main.commands[name].params] == FLAGS[name]


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_defaults_reach_the_command(name: str) -> None:
    context = main.commands[name].make_context(name, list(REQUIRED[name]))
    assert context.params == DEFAULTS[name]
    assert [type(value) for value in context.params.values()] == [type(v) for v in DEFAULTS[name].values()]


@pytest.mark.parametrize("name", ["export-onnx", "bench", "serve", "predict", "predict-ray", "prune"])
def test_help_shows_every_flag_and_its_help(name: str) -> None:
    result = CliRunner().invoke(main, [name, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for param in main.commands[name].params:
        if isinstance(param, click.Option):
            assert param.opts[0] in result.output
            assert param.help and param.help.split(".")[0][:40] in result.output
