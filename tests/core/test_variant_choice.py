"""The default variant follows the bundle's recorded timings on a matching CPU, re-times on another CPU or an old
bundle, prefers exact and batch-invariant variants, and gives way to an explicit variant. The bundles are real
tiny ones; only the manifest's timing numbers and CPU fingerprint are made up, to steer the choice."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sst2dist import variant_choice
from sst2dist.environment import cpu_fingerprint, usable_cpus
from sst2dist.runtime import BundleError, Classifier, load_classifier
from sst2dist.variant_choice import candidates, pick

OTHER_CPU = {"model": "Imaginary CPU 9000", "kind": "imaginary-avx2", "flags": ["avx2"]}
TEXTS = ["a gripping, funny film", "dull and lifeless"]


def edit_manifest(bundle: Path, change) -> Path:
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def with_timings(bundle: Path, by_threads: dict[str, dict[str, float]], cpu: dict | None = None) -> Path:
    """The bundle's manifest with made-up timings, recorded on this CPU unless `cpu` says otherwise."""

    def change(manifest: dict) -> None:
        manifest["variant_timings"]["cpu"] = cpu or cpu_fingerprint()
        manifest["variant_timings"]["ms_per_sentence"] = by_threads
        manifest["variant_timings"]["machine"] = {"busy": False}  # recorded on a quiet machine

    return edit_manifest(bundle, change)


def assert_same_predictions(chosen: Classifier, named: Classifier) -> None:
    ours, theirs = chosen.predict(TEXTS), named.predict(TEXTS)
    assert [p["label"] for p in ours] == [p["label"] for p in theirs]
    assert [p["score"] for p in ours] == pytest.approx([p["score"] for p in theirs], abs=1e-6)


@pytest.fixture
def bundle(tiny_bundle_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle_dir, tmp_path / "bundle"))


# --- the rule, on numbers alone ---


@pytest.mark.parametrize(
    ("ms", "chosen"),
    [
        ({"fp32": 3.0, "optimized": 2.5, "int8": 2.4}, "optimized"),  # int8 4 % faster: not worth its drift
        ({"fp32": 3.0, "optimized": 2.5, "int8": 2.2}, "int8"),  # 12 % faster: clearly
        ({"fp32": 2.4, "optimized": 2.5, "int8": 2.3}, "fp32"),  # exact variants: simply the faster
        ({"fp32": 3.0, "optimized": 3.0, "static-int8": 2.8, "int8": 1.0}, "int8"),
        ({"fp32": 3.0, "optimized": 3.0, "static-int8": 2.0, "int8": 1.9}, "static-int8"),  # batch-invariant first
        ({"optimized": 3.0, "static-int8": 2.0, "int8": 1.7}, "int8"),  # 15 % faster than static-int8
        ({"int8": 1.0}, "int8"),
    ],
)
def test_pick_prefers_exact_then_batch_invariant_unless_clearly_slower(ms: dict, chosen: str) -> None:
    assert pick(ms) == chosen


def test_candidates_are_gated_and_serve_leaves_out_dynamic_int8() -> None:
    manifest = {"variants": {name: {"passed": True} for name in ("fp32", "optimized", "int8", "static-int8")}}
    assert candidates(manifest) == ["optimized", "fp32", "static-int8", "int8"]
    assert candidates(manifest, batch_invariant=True) == ["optimized", "fp32", "static-int8"]
    manifest["variants"] = {"int8": {"passed": True}, "optimized": {"passed": False}, "fp32": {"passed": None}}
    assert candidates(manifest) == candidates(manifest, batch_invariant=True) == ["int8"]  # nothing else passed
    with pytest.raises(ValueError, match="no variant was timed"):
        pick({})


# --- real bundles, steered by their recorded timings ---


def test_export_records_timings_with_the_cpu_fingerprint(tiny_bundle_dir: Path) -> None:
    manifest = json.loads((tiny_bundle_dir / "manifest.json").read_text())
    timings = manifest["variant_timings"]
    assert timings["cpu"] == cpu_fingerprint() and timings["batch_size"] == 1
    assert set(timings["ms_per_sentence"]) == {"1", str(usable_cpus())}
    for by_variant in timings["ms_per_sentence"].values():
        assert set(by_variant) == {"fp32", "optimized", "int8"} and all(ms > 0 for ms in by_variant.values())
    assert timings["machine"]["cpu_share_1_thread"] > 0 and len(timings["machine"]["loadavg"]) == 3
    default = Classifier(tiny_bundle_dir)
    if timings["machine"]["busy"]:  # a busy recording is not trusted: re-timed here
        assert default.choice.reason == "re-timed" and "timed on a busy machine" in default.choice.detail
    else:
        assert default.choice.reason == "recorded"
        assert default.variant == pick(timings["ms_per_sentence"][str(usable_cpus())])


def test_recorded_timings_on_this_cpu_choose_per_thread_count(bundle: Path) -> None:
    with_timings(
        bundle,
        {
            "1": {"fp32": 4.0, "optimized": 3.0, "int8": 2.0},
            "2": {"fp32": 2.0, "optimized": 2.5, "int8": 1.9},
        },
    )
    one = Classifier(bundle, threads=1)
    assert (one.variant, one.choice.reason, one.choice.threads) == ("int8", "recorded", 1)
    assert "1 thread(s)" in one.choice.detail and "int8 2.000 ms" in one.choice.detail
    two = Classifier(bundle, threads=2)  # int8 only 5 % faster than fp32 at 2 threads
    assert two.variant == "fp32" and "int8 is not over 10% faster" in two.choice.detail
    assert Classifier(bundle, threads=8).variant == "fp32"  # the nearest recorded thread count: 2
    served = load_classifier(bundle, threads=1)  # serve/predict: batch mates must not move scores
    assert (served.variant, served.choice.reason) == ("optimized", "recorded")
    assert_same_predictions(served, Classifier(bundle, variant="optimized", threads=1))


def test_a_failed_variant_is_never_the_default_however_fast(bundle: Path) -> None:
    with_timings(bundle, {"1": {"fp32": 4.0, "optimized": 3.0, "int8": 0.1}})

    def fail_int8(manifest: dict) -> None:
        manifest["variants"]["int8"]["passed"] = False

    assert Classifier(edit_manifest(bundle, fail_int8), threads=1).variant == "optimized"


def test_an_explicit_variant_wins(bundle: Path) -> None:
    with_timings(bundle, {"1": {"fp32": 4.0, "optimized": 3.0, "int8": 0.1}})
    chosen = Classifier(bundle, variant="fp32", threads=1)
    assert (chosen.variant, chosen.choice.reason) == ("fp32", "explicit")
    assert load_classifier(bundle, "fp32", threads=1).variant == "fp32"
    assert load_classifier(bundle, "int8", threads=1).variant == "int8"  # even where serve would not pick it


def test_another_cpu_s_timings_are_re_timed_here(bundle: Path) -> None:
    made_up = {"fp32": 900.0, "optimized": 800.0, "int8": 0.001}
    with_timings(bundle, {"1": made_up}, cpu=OTHER_CPU)
    classifier = Classifier(bundle, threads=1)
    choice = classifier.choice
    assert choice.reason == "re-timed" and "Imaginary CPU 9000" in choice.detail
    assert set(choice.ms_per_sentence) == {"fp32", "optimized", "int8"}
    assert all(0 < ms < 100 for ms in choice.ms_per_sentence.values())  # measured, not the made-up numbers
    assert classifier.variant == pick(choice.ms_per_sentence)
    assert_same_predictions(classifier, Classifier(bundle, variant=classifier.variant, threads=1))
    served = load_classifier(bundle, threads=1)
    assert served.choice.reason == "re-timed" and set(served.choice.ms_per_sentence) == {"fp32", "optimized"}


def test_a_bundle_from_before_timings_still_loads_and_is_re_timed(bundle: Path) -> None:
    def old_format(manifest: dict) -> None:
        del manifest["variant_timings"]

    edit_manifest(bundle, old_format)
    classifier = load_classifier(bundle, threads=1)
    assert classifier.choice.reason == "re-timed" and "exported before" in classifier.choice.detail
    assert classifier.variant in ("optimized", "fp32")
    assert_same_predictions(classifier, Classifier(bundle, variant=classifier.variant, threads=1))


def test_one_gated_variant_needs_no_timing(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def only_fp32(manifest: dict) -> None:
        del manifest["variant_timings"]
        for name in ("optimized", "int8"):
            manifest["variants"][name]["passed"] = False

    edit_manifest(bundle, only_fp32)
    monkeypatch.setattr(variant_choice, "time_variants", lambda *args: pytest.fail("timed a lone variant"))
    classifier = Classifier(bundle)
    assert (classifier.variant, classifier.choice.reason) == ("fp32", "only-gated")

    def none_passed(manifest: dict) -> None:
        manifest["variants"]["fp32"]["passed"] = False

    with pytest.raises(BundleError, match="no variant in this bundle passed"):
        load_classifier(edit_manifest(bundle, none_passed))


def test_the_bench_reports_what_serve_would_run_here_without_loading_it(bundle: Path) -> None:
    from sst2dist.bench.report import default_variant_lines
    from sst2dist.runtime import read_manifest

    with_timings(bundle, {"1": {"fp32": 4.0, "optimized": 3.0, "int8": 0.1}})
    said = variant_choice.recorded_choice(read_manifest(bundle), threads=1)
    assert (said["variant"], said["reason"]) == (load_classifier(bundle, threads=1).variant, "recorded")
    assert "optimized 3.000 ms" in default_variant_lines({"default_variant": said})[0]
    with_timings(bundle, {"1": {"fp32": 4.0, "optimized": 3.0}}, cpu=OTHER_CPU)
    elsewhere = variant_choice.recorded_choice(read_manifest(bundle), threads=1)
    assert (elsewhere["variant"], elsewhere["reason"]) == (None, "re-timed")
    assert "Imaginary CPU 9000" in default_variant_lines({"default_variant": elsewhere})[0]


# --- measured at export, used for the choice: batch invariance, machine load, the recorded default ----------


def test_export_measures_batch_invariance_of_every_gated_variant(tiny_bundle_dir: Path) -> None:
    manifest = json.loads((tiny_bundle_dir / "manifest.json").read_text())
    for name, entry in manifest["variants"].items():
        measured = entry["batch_invariance"]
        assert measured["batch_sizes"] == [1, 8, 32] and measured["sentences"] > 32, name
        assert measured["invariant"] == (measured["max_score_diff"] <= measured["tolerance"]), name
    for exact in ("fp32", "optimized"):  # padding and batch mates change nothing measurable in fp32
        assert manifest["variants"][exact]["batch_invariance"]["invariant"], manifest["variants"][exact]


def with_invariance(bundle: Path, invariant: dict[str, bool]) -> Path:
    def change(manifest: dict) -> None:
        for name, value in invariant.items():
            manifest["variants"][name]["batch_invariance"] = {"invariant": value, "max_score_diff": 0.0}

    return edit_manifest(bundle, change)


def test_the_measured_invariance_decides_which_variants_serve_may_run_not_the_engine(bundle: Path) -> None:
    with_timings(bundle, {"1": {"fp32": 2.0, "optimized": 2.0, "int8": 2.0}})
    with_invariance(bundle, {"fp32": False, "optimized": False, "int8": True})  # as if measured so at export
    assert candidates(json.loads((bundle / "manifest.json").read_text()), batch_invariant=True) == ["int8"]
    assert load_classifier(bundle, threads=1).variant == "int8"
    with_invariance(bundle, {"fp32": True, "optimized": False, "int8": False})
    assert load_classifier(bundle, threads=1).variant == "fp32"


def test_the_recorded_default_is_what_load_classifier_runs(bundle: Path) -> None:
    """int8 is fastest at batch 1 and moved with the batch; serve and predict run optimized: the export records
    what they run, not the fastest at batch 1."""
    from sst2dist.export.bundle import default_choice
    from sst2dist.variant_choice import THROUGHPUT

    def change(manifest: dict) -> None:
        manifest["variant_timings"]["batch_ms_per_sentence"] = {"1": {"fp32": 3.0, "optimized": 2.0, "int8": 1.9}}

    with_timings(bundle, {"1": {"fp32": 3.0, "optimized": 2.0, "int8": 0.5}})
    edit_manifest(bundle, change)
    with_invariance(bundle, {"fp32": True, "optimized": True, "int8": False})
    manifest = json.loads((bundle / "manifest.json").read_text())

    def load(name: str, threads: int | None = None) -> Classifier:
        return Classifier(bundle, variant=name, threads=threads)

    recorded = default_choice(manifest, load, 1, 32)
    assert recorded["variant"] == load_classifier(bundle, threads=1, workload=THROUGHPUT).variant == "optimized"
    assert default_choice(manifest, load, 1, 1)["variant"] == load_classifier(bundle, threads=1).variant


def test_the_export_records_each_command_s_default(tiny_bundle_dir: Path) -> None:
    manifest = json.loads((tiny_bundle_dir / "manifest.json").read_text())
    defaults = manifest["default_variants"]
    assert set(defaults) == {"serve", "predict", "predict-ray"}
    assert manifest["default_variant"] == defaults["serve"]["variant"]
    assert all(not variant_choice.batch_dependent(manifest, d["variant"]) for d in defaults.values())
    card = (tiny_bundle_dir / "README.md").read_text()
    assert f"The default is\n`{manifest['default_variant']}`: what `sst2dist serve` runs" in card


BUSY_PROBE = """
import json, sys
from sst2dist.runtime import Classifier
from sst2dist.variant_choice import record_timings
load = lambda name, threads=None: Classifier(sys.argv[1], variant=name, threads=threads)
texts = ["a gripping, funny film about very little, told at length"] * 64
print(json.dumps(record_timings(load, ["fp32"], texts)))
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin one")
def test_a_busy_recording_is_flagged_and_re_timed_at_load(tiny_bundle_dir: Path, bundle: Path) -> None:
    """Timings taken while another process shares the CPU (both pinned to CPU 0) are flagged busy, measured a
    second time, and then not trusted: the choice re-times where it loads."""
    hog = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", "while True: pass"])
    try:
        done = subprocess.run(
            ["taskset", "-c", "0", sys.executable, "-c", BUSY_PROBE, str(tiny_bundle_dir)],
            capture_output=True,
            text=True,
        )
    finally:
        hog.kill()
        hog.wait()
    assert done.returncode == 0, done.stderr[-2000:]
    timings = json.loads(done.stdout.splitlines()[-1])
    assert timings["machine"]["busy"] and timings["machine"]["cpu_share_1_thread"] < 0.8, timings["machine"]

    def change(manifest: dict) -> None:
        manifest["variant_timings"] = timings | {"cpu": cpu_fingerprint()}

    edit_manifest(bundle, change)
    choice = Classifier(bundle, threads=1).choice
    assert choice.reason == "re-timed" and "timed on a busy machine" in choice.detail
