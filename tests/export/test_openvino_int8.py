"""openvino-int8: NNCF int8 of model.onnx saved as OpenVINO IR in the bundle, hashed (both files), gated, loadable
by the runtime Classifier close to fp32, and never chosen when it failed the gate or where OpenVINO or NNCF is
missing (real subprocesses whose imports fail). Real tiny bundles; only timing numbers are made up where a test
steers the choice."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import export_tiny_bundle, import_blocker

from sst2dist.environment import cpu_fingerprint
from sst2dist.export.manifest import sha256
from sst2dist.export.openvino_int8 import skip_reason
from sst2dist.runtime import BundleError, Classifier, load_classifier
from sst2dist.variant_choice import LATENCY, THROUGHPUT

pytest.importorskip("openvino", reason="OpenVINO is not installed: pip install -e '.[openvino]' (make setup does)")
pytest.importorskip("nncf", reason="NNCF is not installed: pip install -e '.[openvino]' (make setup does)")

TEXTS = ["a gripping, funny film", "dull and lifeless", "the acting is superb but the plot goes nowhere"]


@pytest.fixture
def bundle(ov_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(ov_bundle, tmp_path / "bundle"))


def manifest_of(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def make_int8_fastest(bundle: Path, failed: bool = False) -> None:
    """Timings recorded on this CPU in which openvino-int8 is by far the fastest, at every thread count."""
    manifest = manifest_of(bundle)
    timings = manifest["variant_timings"]
    timings["cpu"] = cpu_fingerprint()
    timings["machine"] = {"busy": False}  # the fixture may have been exported beside other jobs: these apply
    made_up = {name: 0.01 if name == "openvino-int8" else 1.0 for name in manifest["variants"]}
    for key in ("ms_per_sentence", "batch_ms_per_sentence"):
        timings[key] = {threads: dict(made_up) for threads in timings[key]}
    manifest["variants"]["openvino-int8"]["passed"] = not failed
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_openvino_int8_is_an_int8_ir_hashed_gated_and_close_to_fp32(ov_bundle: Path) -> None:
    manifest = manifest_of(ov_bundle)
    entry = manifest["variants"]["openvino-int8"]
    xml, weights = ov_bundle / "openvino_int8.xml", ov_bundle / "openvino_int8.bin"
    assert (entry["engine"], entry["precision"], entry["file"]) == ("openvino", "int8", xml.name)
    assert entry["sha256"] == sha256(xml) and entry["weights"]["file"] == weights.name
    assert entry["weights"]["sha256"] == sha256(weights)
    assert entry["size_bytes"] == xml.stat().st_size + weights.stat().st_size
    assert entry["passed"] and entry["verification"]["accuracy_drop_points"] is not None
    assert "FakeQuantize" in xml.read_text()  # int8 activations, not a float copy
    assert weights.stat().st_size < 0.5 * (ov_bundle / "model.onnx").stat().st_size  # int8 weights
    quantization = manifest["openvino_quantization"]
    assert quantization["calibration"]["split"] == "train" and quantization["model_type"] == "transformer"
    assert "openvino-int8" in manifest["variant_timings"]["ms_per_sentence"]["1"]

    int8 = Classifier(ov_bundle, variant="openvino-int8", threads=1)
    fp32 = Classifier(ov_bundle, variant="fp32", threads=1)
    assert int8.choice.engine == "openvino"
    for batch_size in (1, 3):
        expected = fp32.logits(TEXTS, batch_size=batch_size)
        logits = int8.logits(TEXTS, batch_size=batch_size)
        np.testing.assert_allclose(logits, expected, atol=0.05 * np.abs(expected).max() + 1e-3)


def test_a_changed_or_missing_ir_weights_file_is_refused(bundle: Path) -> None:
    weights = bundle / "openvino_int8.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="openvino_int8.bin is corrupt"):
        Classifier(bundle, variant="openvino-int8")
    weights.unlink()
    with pytest.raises(BundleError, match="openvino_int8.bin is missing: export the bundle again"):
        Classifier(bundle, variant="openvino-int8")


def test_openvino_int8_is_chosen_when_fastest_but_never_when_it_failed_the_gate(bundle: Path) -> None:
    make_int8_fastest(bundle)
    for workload in (LATENCY, THROUGHPUT):
        assert load_classifier(bundle, workload=workload).variant == "openvino-int8"
    make_int8_fastest(bundle, failed=True)
    for workload in (LATENCY, THROUGHPUT):
        assert load_classifier(bundle, workload=workload).variant != "openvino-int8"
    with pytest.warns(UserWarning, match="failed the export verification gate"):
        Classifier(bundle, variant="openvino-int8")


def run_blocked(tmp_path: Path, packages: tuple[str, ...], script: str) -> subprocess.CompletedProcess:
    """`script` in a fresh Python where importing any of `packages` fails, as where they are not installed."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(import_blocker(*packages))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-c", textwrap.dedent(script)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_without_openvino_a_fastest_openvino_int8_is_never_chosen_and_says_why(bundle: Path, tmp_path: Path) -> None:
    make_int8_fastest(bundle)
    result = run_blocked(
        tmp_path,
        ("openvino",),
        f"""
        from sst2dist.runtime import BundleError, Classifier, load_classifier
        for workload in ("latency", "throughput"):
            assert load_classifier({str(bundle)!r}, workload=workload).choice.engine == "onnxruntime"
        try:
            Classifier({str(bundle)!r}, variant="openvino-int8")
        except BundleError as err:
            print("refused:", err)
        """,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "refused: variant 'openvino-int8' cannot run here: OpenVINO is not installed" in result.stdout


def test_without_nncf_the_export_leaves_openvino_int8_out_and_says_why(tmp_path: Path) -> None:
    """The export's step for openvino-int8 (after the OpenVINO float variants) in a Python without NNCF: nothing
    written, the reason recorded where the manifest says which OpenVINO variants were left out."""
    result = run_blocked(
        tmp_path,
        ("nncf",),
        """
        import json, sys
        from pathlib import Path
        from sst2dist.export.openvino_int8 import add_openvino_int8
        from sst2dist.export.options import ExportOptions
        manifest = {"variants": {}, "engines": {"openvino": {"mode": "on", "skipped": {}}}}
        add_openvino_int8(manifest, Path("."), ExportOptions(openvino="on"), train=None, tokenizer=None)
        assert "nncf" not in sys.modules
        print(json.dumps(manifest))
        """,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads(result.stdout)
    assert manifest["variants"] == {} and not list(tmp_path.glob("openvino_int8.*"))
    skipped = manifest["engines"]["openvino"]["skipped"]["openvino-int8"]
    assert skipped == "NNCF is not installed (pip install 'sst2dist[openvino]')"


def test_openvino_int8_is_left_out_when_asked_and_says_why() -> None:
    assert skip_reason("off", "dynamic") == "--openvino off"
    assert skip_reason("auto", "none") == "--quantize none"
    assert skip_reason("auto", "dynamic") is None


def test_accuracy_control_measures_on_held_out_train_sentences(
    ov_bundle: Path, tiny_model_dir: Path, sst2_dir: Path, tmp_path: Path
) -> None:
    """With more train sentences than the calibration takes, NNCF's accuracy control measures int8 against float
    on the next 300 (never dev) and the IR it returns is the variant; too few train sentences (the 60-sentence
    sample the other tests export with): plain quantization, recorded as such."""
    from transformers import AutoTokenizer

    from sst2dist.data import load_sst2
    from sst2dist.export.openvino_int8 import quantize_openvino_int8

    train = load_sst2(str(sst2_dir), max_train_samples=2000)["train"]
    shutil.copy(ov_bundle / "model.onnx", tmp_path / "model.onnx")
    record = quantize_openvino_int8(tmp_path, train, AutoTokenizer.from_pretrained(tiny_model_dir), 0.5)
    assert record["tool"] == "nncf.quantize_with_accuracy_control"
    assert record["accuracy_control"] == {"split": "train", "held_out": 300, "max_drop_points": 0.5}
    assert record["calibration"] == {"split": "train", "samples": 256, "seed": 0, "padding": "none"}
    assert 'type="FakeQuantize"' in (tmp_path / "openvino_int8.xml").read_text()
    plain = manifest_of(ov_bundle)["openvino_quantization"]
    assert plain["tool"] == "nncf.quantize" and plain["accuracy_control"] is None


def test_accuracy_control_measures_on_the_hold_checks_least_sure_sentences_with_its_limit(
    ov_bundle: Path, tiny_model_dir: Path, sst2_dir: Path, tmp_path: Path
) -> None:
    """300 random train sentences held the L6 MiniLM's NNCF int8, which lost 0.92 points on dev: int8 flips only
    sentences near the boundary, and a fine-tuned model is sure of most train sentences. With the onnxruntime
    variants' hold check, accuracy control measures on its least-sure sentences, the pool's lost-point limit scaled
    to them (the others count as unchanged), after every calibration sentence."""
    from transformers import AutoTokenizer

    from sst2dist.data import load_sst2
    from sst2dist.export.int8 import CALIBRATION_SAMPLES, onnx_input_names
    from sst2dist.export.int8_hold import prepare_hold_check
    from sst2dist.export.openvino_int8 import quantize_openvino_int8

    train = load_sst2(str(sst2_dir), max_train_samples=2000)["train"]
    shutil.copy(ov_bundle / "model.onnx", tmp_path / "model.onnx")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    labels = manifest_of(ov_bundle)["labels"]
    hold = prepare_hold_check(
        train, tokenizer, onnx_input_names(tmp_path / "model.onnx"), labels, CALIBRATION_SAMPLES, (0.5, 98.0)
    )
    hold.set_reference(tmp_path / "model.onnx")
    record = quantize_openvino_int8(tmp_path, train, tokenizer, 0.5, labels, hold)
    control = record["accuracy_control"]
    assert record["tool"] == "nncf.quantize_with_accuracy_control" and record["calibration"]["samples"] == 256
    assert hold.sentences["rows"] == [256, 2000] and control["held_out"] == 512
    assert control["max_drop_points"] == pytest.approx(0.2 * 1744 / 512, abs=1e-4)
    assert control["pool_max_drop_points"] == 0.2 and "512 least-sure of 1744" in control["sentences"]
    assert 'type="FakeQuantize"' in (tmp_path / "openvino_int8.xml").read_text()


def test_a_failed_ir_write_is_an_os_error(ov_bundle: Path, tmp_path: Path) -> None:
    """Under a file-size limit smaller than the IR's weights, saving it raises OSError (which the export's `writing`
    turns into one sentence), not OpenVINO's RuntimeError."""
    script = f"""
        import resource
        from pathlib import Path
        from sst2dist.engines import openvino
        from sst2dist.export.openvino_int8 import save_ir
        ov = openvino()
        model = ov.Core().read_model({str(ov_bundle / "model.onnx")!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        try:
            save_ir(ov, model, Path({str(tmp_path / "openvino_int8.xml")!r}))
        except OSError as err:
            print("OSError:", err)
        """
    result = run_blocked(tmp_path, (), script)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OSError: [Errno 5] OpenVINO could not write openvino_int8.xml" in result.stdout


def test_accuracy_control_scores_held_out_labels_by_name_as_the_gate_does(
    sst2_sample_dir: Path, tmp_path: Path
) -> None:
    """A model whose id2label is the data's order reversed: NNCF's accuracy control must count a sentence right
    when the label its best column names is the data's label (the gate's rule), not when the column's index is the
    data's id, which scored this model as 1 - its accuracy and so steered the quantization by the wrong figure."""
    from conftest import make_tiny_model
    from transformers import AutoTokenizer

    from sst2dist.data import load_sst2
    from sst2dist.engines import openvino
    from sst2dist.export.openvino_int8 import held_out_accuracy, held_out_items, logits_port, unpadded_feeds
    from sst2dist.labels import label_accuracy

    model_labels, data_labels = ["positive", "negative"], ["negative", "positive"]
    model = make_tiny_model(tmp_path / "model", labels=tuple(model_labels))
    bundle = export_tiny_bundle(model, sst2_sample_dir, tmp_path / "bundle", openvino="off", quantize="none")
    compiled = openvino().Core().compile_model(str(bundle / "model.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    validation = load_sst2(str(sst2_sample_dir))["validation"].select(range(31))  # odd: accuracy is never 1/2
    names = [port.get_any_name() for port in compiled.inputs]
    tokenizer = AutoTokenizer.from_pretrained(model)
    feeds = [unpadded_feeds(tokenizer, sentence, names) for sentence in validation["sentence"]]
    logits = np.concatenate([compiled(feed)[compiled.output(logits_port(compiled))] for feed in feeds])
    measured, _ = held_out_accuracy(compiled, held_out_items(feeds, validation["label"], model_labels, data_labels))
    assert measured == pytest.approx(label_accuracy(logits, validation["label"], model_labels, data_labels))


def test_predict_ray_actors_refuse_an_ir_whose_weights_changed_since_the_driver_chose(
    ov_bundle: Path, bundle: Path
) -> None:
    """NNCF's .xml holds no weights, so an export of other weights can keep it byte for byte: the actors' check that
    they load the driver's export must compare the .bin's sha256 too."""
    from sst2dist.predict.ray_batch import ClassifyBlock, loaded_files

    chosen = loaded_files(Classifier(ov_bundle, variant="openvino-int8", threads=1))
    weights = bundle / "openvino_int8.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # other weights, same graph, each file's hash recorded as an export would
    weights.write_bytes(bytes(data))
    manifest = manifest_of(bundle)
    manifest["variants"]["openvino-int8"]["weights"]["sha256"] = sha256(weights)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="changed while predict-ray ran"):
        ClassifyBlock(str(bundle), "openvino-int8", 1, 32, False, chosen)


def test_the_bench_measures_openvino_int8_as_its_help_says(
    ov_bundle: Path, sst2_sample_dir: Path, tmp_path: Path
) -> None:
    """bench/README and --help list `openvino-int8` among the backends, and serve may run it by default: the bench
    must time it (both its files counted in the footprint), not call it an unknown backend."""
    from sst2dist.bench.run import ALL_BACKENDS, BenchSettings, run_bench

    assert "openvino-int8" in ALL_BACKENDS
    settings = BenchSettings(bundle=str(ov_bundle), data=str(sst2_sample_dir), backends=["openvino-int8"],
                             threads=(1,), batch_sizes=(4,), max_samples=8, latency_samples=2, warmup=0,
                             progress=False, output=str(tmp_path / "out"))  # fmt: skip
    result = run_bench(settings)["backends"]["openvino-int8"]
    assert (result["engine"], result["precision"]) == ("openvino", "int8")
    assert {Path(name).name for name in result["files"]} == {"openvino_int8.xml", "openvino_int8.bin"}


def test_the_lossy_limits_help_names_openvino_int8_which_they_gate() -> None:
    """openvino-int8 is judged by --max-accuracy-drop and --min-label-agreement like every lossy variant (and the
    drop also bounds NNCF's accuracy control): export-onnx --help must say so where it lists the lossy variants."""
    from click.testing import CliRunner

    from sst2dist.cli import main
    from sst2dist.export.gate import LOGIT_TOLERANCE, judge

    entry = {"size_bytes": 1, "verification": {"accuracy": 0.5, "accuracy_drop_points": 9.0, "label_agreement": 1.0}}
    judge("openvino-int8", entry, {"variants": {"fp32": {"size_bytes": 4}}}, max_accuracy_drop=0.5)
    assert "openvino-int8" not in LOGIT_TOLERANCE and entry["passed"] is False
    text = " ".join(CliRunner().invoke(main, ["export-onnx", "--help"], terminal_width=400).output.split())
    assert "the lossy ones (int8, static-int8, openvino-bf16, openvino-int8)" in text
    assert "lossy variant (int8, static-int8, openvino-bf16, openvino-int8)" in text


def test_accuracy_control_is_not_run_on_a_held_out_set_that_cannot_resolve_the_limit(
    sst2_sample_dir: Path, sst2_dir: Path, tmp_path: Path
) -> None:
    """150 held-out train sentences: one lost sentence is 0.67 points, over a 0.5-point limit, so NNCF's accuracy
    control would put layers back in float until int8 lost none of them, on noise (a slower IR shipped). It needs
    as many sentences as make one lost sentence fit the limit (200 here): below that, plain quantization."""
    from conftest import make_tiny_model
    from transformers import AutoTokenizer

    from sst2dist.data import load_sst2
    from sst2dist.export.openvino_int8 import CALIBRATION_SAMPLES, held_out_needed, quantize_openvino_int8

    assert (held_out_needed(0.5), held_out_needed(1.0), held_out_needed(100.0)) == (200, 100, 100)
    model = make_tiny_model(tmp_path / "model")
    bundle = export_tiny_bundle(model, sst2_sample_dir, tmp_path / "bundle", openvino="off", quantize="none")
    train = load_sst2(str(sst2_dir), max_train_samples=CALIBRATION_SAMPLES + 150)["train"]
    record = quantize_openvino_int8(bundle, train, AutoTokenizer.from_pretrained(model), 0.5)
    assert record["tool"] == "nncf.quantize" and record["accuracy_control"] is None
