"""Distillation: the loss against a hand computation, the teacher-logits cache, and real training runs with a
teacher (exact resume, smaller students)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_model, resume_copy
from conftest import run_train as train

from sst2dist.distill.loss import distillation_loss
from sst2dist.distill.teacher import TeacherError, data_fingerprint, save_logits, teacher_logits

REPO_ROOT = Path(__file__).resolve().parents[2]
SENTENCES = ["a gorgeous, witty film", "dull and lifeless", "it works", "never again", "fine"]
LABELS = [1, 0, 1, 0, 1]


def test_the_loss_is_alpha_ce_plus_t_squared_kl() -> None:
    import torch

    student = torch.tensor([[1.0, -0.5], [0.2, 0.3], [-2.0, 1.5]])
    teacher = torch.tensor([[2.0, -1.0], [-0.4, 0.9], [-1.0, 3.0]])
    labels = torch.tensor([0, 1, 1])
    alpha, t = 0.3, 2.5

    def softmax(row: list[float]) -> list[float]:
        exps = [math.exp(x) for x in row]
        return [e / sum(exps) for e in exps]

    ce = -sum(math.log(softmax(s)[y]) for s, y in zip(student.tolist(), labels.tolist(), strict=True)) / 3
    kl = 0.0
    for s, te in zip(student.tolist(), teacher.tolist(), strict=True):
        p_t, p_s = softmax([x / t for x in te]), softmax([x / t for x in s])
        kl += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))
    expected_kd = t * t * kl / 3
    loss, ce_out, kd_out = distillation_loss(student, teacher, labels, alpha, t)
    assert ce_out.item() == pytest.approx(ce, rel=1e-6)
    assert kd_out.item() == pytest.approx(expected_kd, rel=1e-5)
    assert loss.item() == pytest.approx(alpha * ce + (1 - alpha) * expected_kd, rel=1e-5)


def test_logits_are_cached_reused_and_invalidated(tmp_path: Path, tiny_model_dir: Path, accelerator) -> None:
    cache = tmp_path / "cache"
    logits, meta = teacher_logits(str(tiny_model_dir), SENTENCES, LABELS, 32, accelerator, cache)
    assert logits.shape == (5, 2) and np.isfinite(logits).all()
    assert meta["key"]["data_sha256"] == data_fingerprint(SENTENCES, LABELS)
    [cached] = list(cache.glob("*.npz"))
    written = cached.stat().st_mtime_ns

    again, _ = teacher_logits(str(tiny_model_dir), SENTENCES, LABELS, 32, accelerator, cache)
    assert np.array_equal(again, logits) and cached.stat().st_mtime_ns == written  # reused, not recomputed

    teacher_logits(str(tiny_model_dir), SENTENCES, [0, 0, 1, 0, 1], 32, accelerator, cache)  # other labels
    teacher_logits(str(tiny_model_dir), SENTENCES, LABELS, 16, accelerator, cache)  # other max length
    other_teacher = make_tiny_model(tmp_path / "other-teacher", seed=7)
    other, _ = teacher_logits(str(other_teacher), SENTENCES, LABELS, 32, accelerator, cache)
    assert len(list(cache.glob("*.npz"))) == 4 and not np.array_equal(other, logits)
    assert not list(cache.glob(".*"))  # no shards or temporaries left


def test_the_logits_match_the_teacher_one_sentence_at_a_time(tiny_model_dir: Path, tmp_path: Path, accelerator) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    logits, _ = teacher_logits(str(tiny_model_dir), SENTENCES, LABELS, 32, accelerator, tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for row, sentence in enumerate(SENTENCES):
            alone = model(**tokenizer(sentence, return_tensors="pt")).logits[0].numpy()
            np.testing.assert_allclose(logits[row], alone, atol=1e-2)  # bf16 autocast where the CPU has it


def test_a_logits_file_for_other_data_is_refused(tmp_path: Path, accelerator) -> None:
    file = tmp_path / "logits.npz"
    key = {"data_sha256": data_fingerprint(SENTENCES, LABELS), "teacher_sha256": "t", "max_length": 8}
    save_logits(file, np.zeros((5, 2)), {"key": key, "rows": 5})
    assert teacher_logits(str(file), SENTENCES, LABELS, 8, accelerator)[0].shape == (5, 2)
    with pytest.raises(TeacherError, match="other training data \\(5 rows"):
        teacher_logits(str(file), SENTENCES[:4], LABELS[:4], 8, accelerator)
    with pytest.raises(TeacherError, match="neither a model folder"):
        teacher_logits(str(tmp_path), SENTENCES, LABELS, 8, accelerator)


# ------------------------------------------------------------------------------------------ real runs


def student_options(sst2_dir: Path, student: Path, teacher: Path, out: Path, cache: Path) -> list[object]:
    return [
        "--data", sst2_dir, "--model", student, "--teacher", teacher, "--teacher-cache", cache,
        "--output-dir", out, "--max-train-samples", 160, "--max-eval-samples", 32, "--batch-size", 32,
        "--epochs", 3, "--eval-every", 4, "--save-every", 7, "--keep-checkpoints", 5, "--lr", 1e-3,
        "--log-every", 2, "--distill-alpha", 0.2, "--distill-temperature", 3,
    ]  # fmt: skip


@pytest.mark.slow
def test_resume_with_a_teacher_gives_the_same_weights_as_a_straight_run(
    sst2_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    teacher = make_tiny_model(tmp_path / "teacher", seed=3)
    cache = tmp_path / "cache"
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    result = train(*student_options(sst2_dir, tiny_model_dir, teacher, straight, cache))
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(cache.glob("*.npz"))) == 1  # the whole training split, scored once

    log = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    logged = [r for r in log if "loss_kd" in r]
    assert logged and all(r["loss"] == pytest.approx(0.2 * r["loss_ce"] + 0.8 * r["loss_kd"], abs=2e-4) for r in logged)
    metrics = json.loads((straight / "metrics.json").read_text())
    assert metrics["teacher"]["key"]["teacher_sha256"] and metrics["train_samples_seen"] == 480

    result = resume_copy(straight, resumed, 7, student_options(sst2_dir, tiny_model_dir, teacher, resumed, cache))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((resumed / "metrics.json").read_text())["train_samples_seen"] == 480
    final_a = load_file(straight / "checkpoints" / "step-00000015" / "model.safetensors")
    final_b = load_file(resumed / "checkpoints" / "step-00000015" / "model.safetensors")
    assert all((final_a[k] == final_b[k]).all() for k in final_a)

    changed = train(*student_options(sst2_dir, tiny_model_dir, tiny_model_dir, resumed, cache), "--resume")
    assert changed.returncode == 1 and "--teacher" in changed.stderr  # another teacher: not the same run


@pytest.mark.slow
def test_init_layers_builds_a_smaller_student(sst2_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    options = ["--data", sst2_dir, "--model", tiny_model_dir, "--output-dir", out, "--max-train-samples", 32]
    options += ["--max-eval-samples", 16, "--batch-size", 16, "--max-steps", 2, "--init-layers", "1"]
    result = train(*options)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1

    from safetensors.torch import load_file

    student = load_file(out / "checkpoints" / "step-00000002" / "model.safetensors")
    assert not any(".layer.1." in name for name in student)
    bad = train(*options[:-2], "--init-layers", "0,5", "--overwrite")
    assert bad.returncode == 1 and "the model has 2 layers" in bad.stderr
    assert train(*options[:-2], "--init-layers", "2,1", "--overwrite").returncode == 1


def test_init_layers_on_a_trained_classifier_keeps_its_head_and_the_chosen_layers(tmp_path: Path) -> None:
    """The L3-from-L6 recipe: layers cut from a fine-tuned student keep their weights, and so do its pooler and
    classifier (nothing is re-initialised), so the smaller student starts from the task, not from scratch."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from sst2dist.modeling import keep_layers, load_model

    torch.manual_seed(3)
    config = BertConfig(vocab_size=99, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "l4")
    source = BertForSequenceClassification.from_pretrained(tmp_path / "l4").state_dict()

    student = load_model(str(tmp_path / "l4"))
    keep_layers(student, [0, 3])
    cut = student.state_dict()
    assert student.config.num_hidden_layers == 2 and len(student.bert.encoder.layer) == 2
    for name in ("classifier.weight", "bert.pooler.dense.weight", "bert.embeddings.word_embeddings.weight"):
        assert torch.equal(cut[name], source[name]), name
    for new, old in ((0, 0), (1, 3)):
        prefix = "bert.encoder.layer.{}.attention.self.query.weight"
        assert torch.equal(cut[prefix.format(new)], source[prefix.format(old)])
    assert not torch.equal(cut[prefix.format(1)], source[prefix.format(1)])


@pytest.mark.slow
def test_the_shipped_teacher_logits_fit_the_real_training_split(sst2_dir: Path, accelerator) -> None:
    from sst2dist.data import load_sst2

    train_split = load_sst2(str(sst2_dir))["train"]
    labels = np.array(train_split["label"])
    logits, meta = teacher_logits(
        "packaged:all-mpnet-base-v2-sst2", train_split["sentence"], list(labels), 128, accelerator
    )
    assert logits.shape == (67349, 2) and meta["rows"] == 67349
    assert (logits.argmax(axis=1) == labels).mean() > 0.9  # the teacher learned these very labels
    assert meta["teacher_dev_accuracy"] >= 0.935


@pytest.mark.slow
def test_two_processes_shard_the_teacher_and_stop_together_on_a_nan_loss(
    sst2_dir: Path, tiny_model_dir: Path, tmp_path: Path, accelerator
) -> None:
    """The teacher's logits computed by 2 processes (rows r, r + 2, ...) equal the 1-process ones, and the NaN
    guard still stops both processes at the same step when a teacher is in the loss."""
    from sst2dist.data import load_sst2

    teacher = make_tiny_model(tmp_path / "teacher", seed=5)
    cache = tmp_path / "cache"
    out = tmp_path / "run"
    options = ["--data", sst2_dir, "--model", tiny_model_dir, "--teacher", teacher, "--teacher-cache", cache]
    options += ["--output-dir", out, "--max-train-samples", 128, "--max-eval-samples", 16, "--batch-size", 16]
    options += ["--lr", 1e6, "--save-every", 1, "--max-steps", 30, "--log-every", 2]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    sst2dist = Path(sys.executable).parent / "sst2dist"
    result = subprocess.run(
        [str(sst2dist), "train", "--num-processes", "2", *map(str, options)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 1 and "not finite" in result.stderr, result.stderr[-3000:]
    stops = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if "non_finite" in line]
    assert len(stops) == 1 and f"at step {stops[0]['step']}" in result.stderr
    assert not (out / "model").exists()

    [sharded_file] = list(cache.glob("*.npz"))
    train_split = load_sst2(str(sst2_dir))["train"]
    alone, _ = teacher_logits(
        str(teacher), train_split["sentence"], train_split["label"], 128, accelerator, tmp_path / "alone"
    )
    with np.load(sharded_file) as sharded:
        np.testing.assert_allclose(sharded["logits"], alone, atol=2e-2)


def test_make_students_augment_cuts_l3_from_the_distilled_l6(tmp_path: Path) -> None:
    """`make students AUGMENT=1` trains L6 first, then L3 from L6's model folder (dry run: nothing is trained)."""
    students = tmp_path / "students"
    result = subprocess.run(
        ["make", "-n", "students", "AUGMENT=1", f"STUDENTS={students}", "DATA=../shared/data/sst2"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    l6 = result.stdout.index(f"--output-dir {students}/l6 ")
    l3 = result.stdout.index(f"--output-dir {students}/l3 ")
    l3_line = result.stdout[l3:].splitlines()[0]
    assert l6 < l3 and f"--model {students}/l6/model --init-layers 0,2,4" in l3_line


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_a_truncated_logits_file_is_refused_in_one_sentence(tmp_path: Path, keep: float) -> None:
    from sst2dist.distill.teacher import load_logits

    path = tmp_path / "teacher-logits.npz"
    save_logits(path, np.zeros((40, 2), dtype=np.float32), {"key": "x"})
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])
    with pytest.raises(TeacherError, match="is not a teacher-logits file .* delete it to recompute"):
        load_logits(path)


# Each process's default cache folder is its own, as on machines that share no file system.
CACHE_PER_PROCESS = """
import os
os.environ["SST2DIST_CACHE"] = os.environ["SST2DIST_TEST_CACHES"] + "/rank" + os.environ.get("RANK", "0")
"""


@pytest.mark.slow
def test_teacher_scoring_on_caches_the_processes_do_not_share_is_refused_before_scoring(
    sst2_sample_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(CACHE_PER_PROCESS)
    teacher = make_tiny_model(tmp_path / "teacher", seed=5)
    options = ["--data", sst2_sample_dir, "--model", tiny_model_dir, "--teacher", teacher, "--mixed-precision", "no"]
    options += ["--output-dir", tmp_path / "run", "--max-steps", 1, "--batch-size", 8]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    env |= {"SST2DIST_TEST_CACHES": str(tmp_path / "caches")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
    sst2dist = Path(sys.executable).parent / "sst2dist"
    result = subprocess.run(
        [str(sst2dist), "train", "--num-processes", "2", *map(str, options)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert "teacher scoring with 2 processes needs a teacher cache that every process shares" in result.stderr
    assert sorted(p.name for p in (tmp_path / "caches").iterdir()) == ["rank0", "rank1"]  # one cache each
    assert not list((tmp_path / "caches").rglob("shard-*.npz"))  # refused before scoring


def test_a_logits_file_of_three_labels_is_a_teacher_for_three_label_data(tmp_path: Path, accelerator) -> None:
    """The .npz a 3-class teacher's scoring (or `augment`) writes: 3 logits a row, keyed by the label names."""
    from sst2dist.labels import LabelSet

    file, names = tmp_path / "logits.npz", ["bad", "good", "meh"]
    key = {"data_sha256": data_fingerprint(SENTENCES, LABELS), "teacher_sha256": "t", "max_length": 8}
    save_logits(file, np.arange(15.0).reshape(5, 3), {"key": key, "rows": 5, "labels": names})
    logits, meta = teacher_logits(str(file), SENTENCES, LABELS, 8, accelerator, label_set=LabelSet.from_keys(names))
    assert logits.tolist() == np.arange(15.0).reshape(5, 3).tolist() and meta["labels"] == names
    save_logits(file, np.zeros((5, 4)), {"key": key, "rows": 5, "labels": names})  # e.g. sentence vectors
    with pytest.raises(TeacherError, match="holds 4 values per row, not 3 logits"):
        teacher_logits(str(file), SENTENCES, LABELS, 8, accelerator, label_set=LabelSet.from_keys(names))
