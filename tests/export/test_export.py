"""export-onnx: a tiny model end to end, the verification gate, atomic writes, bad input, a real MiniLM (slow)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import fit_discriminant_head
from onnx import numpy_helper

from sst2dist.cli import main
from sst2dist.environment import ACCELERATION_FLAGS, cpu_fingerprint, usable_cpus
from sst2dist.export import bundle as export_module
from sst2dist.export import int8 as int8_module
from sst2dist.export.bundle import ExportError, export_bundle
from sst2dist.runtime import VARIANT_FILES, Classifier, load_classifier, read_manifest
from sst2dist.variant_choice import batch_dependent, workload_for

TEXTS = ["a gripping, funny film", "dull and lifeless", "it is a movie", ""]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def perturb(path: Path, factors: dict[str, float], noise: float = 0.0) -> None:
    """Scale the named initializers of an ONNX file (and add noise to every 2-D float one)."""
    model = onnx.load(str(path))
    rng = np.random.default_rng(0)
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if tensor.name in factors:
            array = array * np.asarray(factors[tensor.name], dtype=array.dtype)
        elif noise and array.dtype == np.float32 and array.ndim == 2:
            array = array + rng.normal(0, noise, array.shape).astype(np.float32)
        else:
            continue
        tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    onnx.save(model, str(path))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- the shared tiny bundle ---


def test_bundle_files_and_manifest(tiny_bundle_dir: Path, tiny_model_dir: Path) -> None:
    manifest = json.loads((tiny_bundle_dir / "manifest.json").read_text())
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tiny_bundle_dir / name).is_file(), name
    assert set(manifest["variants"]) == {"fp32", "optimized", "int8"}
    for name, entry in manifest["variants"].items():
        path = tiny_bundle_dir / VARIANT_FILES[name]
        assert entry["file"] == path.name
        assert entry["sha256"] == sha256(path) and entry["size_bytes"] == path.stat().st_size
        assert entry["opset"] == 18 and entry["passed"] is True
        check = entry["verification"]
        assert set(check["by_batch_size"]) == {"1", "8", "32"}
        assert 0.0 <= check["accuracy"] <= 1.0
    for name in ("fp32", "optimized"):
        assert manifest["variants"][name]["verification"]["max_abs_logit_diff"] <= 1e-4
        assert manifest["variants"][name]["verification"]["label_agreement"] == 1.0
    assert manifest["variants"]["int8"]["size_ratio_vs_fp32"] < 0.5
    assert manifest["source"]["weights"] == [
        {"file": "model.safetensors", "sha256": sha256(tiny_model_dir / "model.safetensors")}
    ]
    assert manifest["verification"]["samples"] == 64
    timings = manifest["variant_timings"]  # test_variant_choice checks how the default follows them
    assert timings["cpu"] == cpu_fingerprint() and set(timings["ms_per_sentence"]["1"]) == set(manifest["variants"])
    assert manifest["default_variant"] == manifest["default_variants"]["serve"]["variant"]  # serve's, as it runs
    assert manifest["max_length"] == 512 and manifest["labels"] == ["negative", "positive"]
    assert {"torch", "transformers", "optimum", "onnxruntime"} <= set(manifest["versions"])
    assert manifest["quantization"]["config"] in ("avx512_vnni", "avx512", "avx2", "arm64")
    assert set(manifest["quantization"]["cpu_flags"]) <= set(ACCELERATION_FLAGS)
    config = json.loads((tiny_bundle_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}


def test_bundle_loads_in_optimum_and_pipeline(tiny_bundle_dir: Path) -> None:
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(tiny_bundle_dir)
    variants = read_manifest(tiny_bundle_dir)["variants"]  # fp32, optimized, int8: the onnxruntime files here
    for variant, file_name in VARIANT_FILES.items():
        if variant not in variants:
            continue
        model = ORTModelForSequenceClassification.from_pretrained(tiny_bundle_dir, file_name=file_name)
        classify = pipeline("text-classification", model=model, tokenizer=tokenizer)
        theirs = classify(TEXTS[:3])
        ours = Classifier(tiny_bundle_dir, variant=variant).predict(TEXTS[:3], batch_size=1)  # as the pipeline runs
        assert [t["label"] for t in theirs] == [o["label"] for o in ours]
        assert [t["score"] for t in theirs] == pytest.approx([o["score"] for o in ours], abs=1e-5)


def test_cli_export_prints_the_gate_and_refuses_to_overwrite(
    tiny_model_dir: Path, sst2_dir: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    args = ["export-onnx", str(tiny_model_dir), "--output", str(tmp_path / "b"), "--data", str(sst2_dir)]
    args += ["--max-verify-samples", "16", "--quantize", "none", "--optimize", "none", "--openvino", "off"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "default variant: fp32" in result.output and "passed" in result.output
    first = sha256(tmp_path / "b" / "manifest.json")
    again = runner.invoke(main, args)
    assert again.exit_code != 0 and "already exists" in again.output and "--force" in again.output
    assert sha256(tmp_path / "b" / "manifest.json") == first
    assert runner.invoke(main, [*args, "--force"]).exit_code == 0
    assert leftovers(tmp_path) == []


# --- the gate ---


def test_gate_refuses_a_corrupted_optimized_graph(
    tiny_model_dir: Path, sst2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_optimize = export_module.optimize_graph

    def optimize_then_corrupt(staging: Path, level: str) -> None:
        real_optimize(staging, level)
        perturb(staging / VARIANT_FILES["optimized"], {}, noise=0.05)

    monkeypatch.setattr(export_module, "optimize_graph", optimize_then_corrupt)
    with pytest.raises(ExportError, match=r"variant optimized: max \|Δlogit\| vs PyTorch .* \(limit 0.0001\)"):
        export_bundle(tiny_model_dir, tmp_path / "b", data=str(sst2_dir), max_verify_samples=32, quantize="none")
    assert list(tmp_path.iterdir()) == []


def test_int8_accuracy_gate_fails_or_keeps_marked(
    tiny_model_dir: Path, sst2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_quantize = export_module.quantize_dynamic_int8

    def quantize_then_flip_classifier(staging: Path, *held_by: object) -> dict:
        recipe = real_quantize(staging, *held_by)
        path = staging / VARIANT_FILES["int8"]
        names = [i.name for i in onnx.load(str(path)).graph.initializer if i.name.startswith("classifier.")]
        perturb(path, {name: -1.0 for name in names if name.endswith(("_scale", ".bias"))})  # logits * -1
        return recipe

    monkeypatch.setattr(export_module, "quantize_dynamic_int8", quantize_then_flip_classifier)
    options = {"data": str(sst2_dir), "max_verify_samples": 100, "optimize": "none", "openvino": "off"}
    with pytest.raises(ExportError, match=r"variant int8: accuracy .* points below PyTorch \(limit 0.5\).*--keep"):
        export_bundle(tiny_model_dir, tmp_path / "b", **options)
    assert list(tmp_path.iterdir()) == []

    manifest = export_bundle(tiny_model_dir, tmp_path / "b", keep_failed=True, **options)
    int8 = manifest["variants"]["int8"]
    assert int8["passed"] is False and int8["verification"]["accuracy_drop_points"] > 0.5
    assert "points below PyTorch" in int8["failure"]
    assert manifest["default_variant"] == "fp32" and Classifier(tmp_path / "b").variant == "fp32"


def test_both_int8_variants_keep_down_projections_weight_only_and_static_is_batch_invariant(
    tiny_model_dir: Path, sst2_dir: Path, tmp_path: Path
) -> None:
    options = {"data": str(sst2_dir), "max_verify_samples": 32, "optimize": "none", "max_accuracy_drop": 100.0}
    manifest = export_bundle(tiny_model_dir, tmp_path / "b", quantize="static", **options)
    down = int8_module.down_projections(tmp_path / "b" / VARIANT_FILES["fp32"])
    assert len(down) == 2  # one FFN output layer per layer of the 2-layer tiny model
    for variant, recipe in (("int8", manifest["quantization"]), ("static-int8", manifest["static_quantization"])):
        assert recipe["int8_weight_only"] == down
        graph = onnx.load(str(tmp_path / "b" / VARIANT_FILES[variant])).graph
        weights = {tensor.name: tensor for tensor in graph.initializer}
        matmuls = {node.name: node for node in graph.node if node.op_type == "MatMul"}
        for name in down:  # still a float MatMul, fed by int8 weights dequantized at run time
            dequantize = next(
                n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] in matmuls[name].input
            )
            assert weights[dequantize.input[0]].data_type == onnx.TensorProto.INT8
    static = Classifier(tmp_path / "b", variant="static-int8")
    alone = np.concatenate([static.logits([text]) for text in TEXTS[:3]])
    assert np.abs(static.logits(TEXTS[:3]) - alone).max() < 1e-5  # fixed activation scales: no batch-mate effect


# --- atomic writes ---


def test_interrupted_export_leaves_nothing_and_keeps_the_old_bundle(
    tiny_model_dir: Path, sst2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "b"
    options = {"data": str(sst2_dir), "max_verify_samples": 8, "optimize": "none", "quantize": "none"}

    def interrupted(*args, **kwargs):
        assert any(tmp_path.glob("**/.b.*.tmp/model.onnx"))  # the fp32 graph was half way to a bundle
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "verify_bundle", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_bundle(tiny_model_dir, bundle, **options)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(KeyboardInterrupt):  # folders it had to create go too
        export_bundle(tiny_model_dir, tmp_path / "new" / "deeper" / "b", **options)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.undo()
    export_bundle(tiny_model_dir, bundle, **options)
    before = {p.name: sha256(p) for p in bundle.iterdir()}
    monkeypatch.setattr(export_module, "verify_bundle", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_bundle(tiny_model_dir, bundle, force=True, **options)
    assert {p.name: sha256(p) for p in bundle.iterdir()} == before
    assert leftovers(tmp_path) == []


# --- bad input: clear error, non-zero exit, nothing written ---


def not_a_classifier(tmp_path: Path, tiny_model_dir: Path) -> Path:
    from transformers import BertConfig, BertModel

    folder = tmp_path / "encoder"
    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(folder)
    return folder


def unreadable_weights(tmp_path: Path, tiny_model_dir: Path) -> Path:
    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "damaged"))
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    return folder


def plain_folder(tmp_path: Path, tiny_model_dir: Path) -> Path:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    return tmp_path / "notes"


@pytest.mark.parametrize(
    ("make_model", "message"),
    [
        (lambda tmp, tiny: tmp / "missing", "does not exist"),
        (plain_folder, "has no config.json"),
        (not_a_classifier, "holds BertModel, not a sequence classifier"),
        (unreadable_weights, "weights or tokenizer are unreadable"),
    ],
)
def test_bad_model_folders(make_model, message: str, tiny_model_dir: Path, sst2_dir: Path, tmp_path: Path) -> None:
    source = make_model(tmp_path, tiny_model_dir)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export-onnx", str(source), "--output", str(out), "--data", str(sst2_dir)])
    assert result.exit_code != 0
    assert message in result.output
    assert not out.exists() and leftovers(tmp_path) == []


def test_bad_output_paths_and_options(tiny_model_dir: Path, sst2_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    a_file = tmp_path / "bundle.txt"
    a_file.write_text("keep me")
    result = runner.invoke(main, ["export-onnx", str(tiny_model_dir), "--output", str(a_file)])
    assert result.exit_code != 0 and "is a file" in result.output
    assert a_file.read_text() == "keep me"
    plain = tmp_path / "docs"
    plain.mkdir()
    (plain / "a.txt").write_text("x")
    result = runner.invoke(main, ["export-onnx", str(tiny_model_dir), "--output", str(plain), "--force"])
    assert result.exit_code != 0 and "not a bundle" in result.output
    assert sorted(p.name for p in plain.iterdir()) == ["a.txt"]
    result = runner.invoke(main, ["export-onnx", str(tiny_model_dir), "-o", str(tmp_path / "x"), "--opset", "9"])
    assert result.exit_code != 0 and "--opset must be in [14, 21], got 9" in result.output
    assert leftovers(tmp_path) == [] and not (tmp_path / "x").exists()


# --- a real MiniLM on the real validation set ---


def probed_minilm(folder: Path, sst2_dir: Path, samples: int = 512) -> Path:
    """The packaged MiniLM with a linear-discriminant head fitted on train sentences' pooled features: a real
    (~75%) classifier in seconds, with real logit margins, for the int8 gate to judge."""
    from sst2dist.modeling import DEFAULT_MODEL, load_model, load_tokenizer

    model, tokenizer = load_model(DEFAULT_MODEL).eval(), load_tokenizer(DEFAULT_MODEL)
    fit_discriminant_head(model, tokenizer, sst2_dir, margin=4.0, samples=samples)  # margins like a fine-tuned model
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_real_minilm_export_and_gate(sst2_dir: Path, tmp_path: Path) -> None:
    """fp32/optimized must match PyTorch on real sentences; int8 must be sized right and judged consistently.

    The probed head has far smaller margins than a fine-tuned model, so whether int8 stays within 0.5 points
    here is not the point (README, "int8 recipe", has the fine-tuned numbers); --keep-failed keeps it either way.
    """
    model_dir = probed_minilm(tmp_path / "model", sst2_dir)
    # 256 of the 872 validation sentences (the CLI's default is all) keep six variants at three batch sizes short.
    manifest = export_bundle(
        model_dir, tmp_path / "bundle", data=str(sst2_dir), max_verify_samples=256, keep_failed=True
    )
    check = manifest["verification"]
    assert check["samples"] == 256 and check["pytorch_accuracy"] > 0.6
    variants = manifest["variants"]
    for name in ("fp32", "optimized"):
        assert variants[name]["passed"], variants[name]["failure"]
        assert variants[name]["verification"]["max_abs_logit_diff"] < 1e-4
    int8 = variants["int8"]
    drop = int8["verification"]["accuracy_drop_points"]
    agreement = int8["verification"]["label_agreement"]
    assert int8["passed"] == (drop <= 0.5 and agreement >= 0.98) and (int8["failure"] is None) == int8["passed"]
    assert int8["verification"]["label_agreement"] > 0.9  # broken quantization agrees ~50%
    assert int8["size_ratio_vs_fp32"] <= 0.30 and int8["meets_size_target"]
    timed = manifest["variant_timings"]["ms_per_sentence"][str(usable_cpus())]
    assert set(timed) == {name for name, entry in variants.items() if entry["passed"]}
    serve = manifest["default_variants"]["serve"]  # what serve runs here with its defaults, printed and on the card
    assert manifest["default_variant"] == serve["variant"]
    assert not batch_dependent(manifest, serve["variant"])
    if not manifest["variant_timings"]["machine"]["busy"]:  # a busy recording is re-timed, so may choose otherwise
        chosen = load_classifier(tmp_path / "bundle", threads=serve["threads"], workload=workload_for(32))
        assert chosen.variant == serve["variant"]
    assert {"Attention", "SkipLayerNormalization"} <= {
        node.op_type for node in onnx.load(str(tmp_path / "bundle" / VARIANT_FILES["optimized"])).graph.node
    }


@pytest.mark.slow
def test_a_tiny_mpnet_trains_exports_and_passes_the_gate(sst2_dir: Path, tmp_path: Path) -> None:
    """The teacher's architecture: no token type ids, pad id 1; the same loop, exporter and gate."""
    from accelerate.state import AcceleratorState, GradientState
    from conftest import make_tiny_mpnet

    from sst2dist.train.loop import main as train_main

    base = make_tiny_mpnet(tmp_path / "mpnet")
    assert json.loads((base / "config.json").read_text())["pad_token_id"] == 1
    run = tmp_path / "run"
    options = ["--data", str(sst2_dir), "--model", str(base), "--output-dir", str(run), "--batch-size", "16"]
    options += ["--max-train-samples", "64", "--max-eval-samples", "32", "--max-steps", "3", "--lr", "1e-3"]
    try:
        assert train_main(options) == 0
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()

    bundle = tmp_path / "bundle"
    limits = {"max_accuracy_drop": 100.0, "min_label_agreement": 0.0}  # 3 steps: near-zero logits, labels flip
    manifest = export_bundle(run / "model", bundle, data=str(sst2_dir), max_verify_samples=64, **limits)
    assert onnx_inputs(bundle / VARIANT_FILES["fp32"]) == ["input_ids", "attention_mask"]
    assert {"fp32", "int8"} <= set(manifest["variants"])
    for name, entry in manifest["variants"].items():
        assert entry["passed"], (name, entry["failure"])
    assert "Attention" not in manifest["optimization"]["fused_operators"]  # relative-position attention: no fusion
    assert "Attention" in manifest["optimization"]["note"]
    labels = Classifier(bundle, variant="fp32").predict(TEXTS)
    assert {p["label"] for p in labels} <= {"negative", "positive"}


def onnx_inputs(path: Path) -> list[str]:
    return [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]


def test_batch_invariance_is_not_claimed_from_a_single_verify_sentence(
    tiny_model_dir: Path, sst2_sample_dir: Path, tmp_path: Path
) -> None:
    """With --max-verify-samples 1 every batch size runs the same lone sentence, so nothing can move: dynamic int8
    was recorded batch-invariant and became a default for serve and predict, whose batches mix texts."""
    limits = {"max_accuracy_drop": 100.0, "min_label_agreement": 0.0}
    export_bundle(tiny_model_dir, tmp_path / "b", data=str(sst2_sample_dir), max_verify_samples=1, openvino="off",
                  **limits)  # fmt: skip
    manifest = read_manifest(tmp_path / "b")
    assert "invariant" not in manifest["variants"]["int8"]["batch_invariance"]
    assert batch_dependent(manifest, "int8") and not batch_dependent(manifest, "fp32")
