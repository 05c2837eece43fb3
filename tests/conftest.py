"""Shared fixtures: offline hub, the real SST-2 folder and a small sample of its format, tiny random BERT models
built in the test session."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SST2_DIR = REPO_ROOT.parent / "shared" / "data" / "sst2"
SST2_SAMPLE_DIR = REPO_ROOT / "tests" / "data" / "sst2"
# `make test-py310`: the base install on the lowest Python declared has no torch to export the tiny bundle, so the
# main venv exports it first (python tests/conftest.py DIR) and this names it.
PREBUILT_BUNDLE = os.environ.get("SST2DIST_TEST_BUNDLE")


@pytest.fixture(scope="session")
def sst2_dir() -> Path:
    """The real SST-2 (GLUE TSVs), for tests whose result depends on it: accuracy, row counts, real-data benches."""
    if not (SST2_DIR / "dev.tsv").is_file():
        pytest.fail(f"the real SST-2 data is expected at {SST2_DIR}")
    return SST2_DIR


@pytest.fixture(scope="session")
def sst2_sample_dir() -> Path:
    """60 training and 72 validation sentences in the same layout, written for the tests: for tests that need
    some SST-2-format data, so they run from a fresh clone."""
    return SST2_SAMPLE_DIR


def make_tiny_model(
    path: Path, seed: int = 0, hidden_size: int = 32, layers: int = 2, heads: int = 2, labels: tuple[str, ...] = ()
) -> Path:
    """A random BERT classifier (2 layers, 32 wide by default) with the packaged MiniLM's real WordPiece tokenizer;
    of SST-2's labels unless `labels` names others."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from sst2dist.modeling import DEFAULT_MODEL, ID2LABEL, LABEL2ID, load_tokenizer

    torch.manual_seed(seed)
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=512,
        num_labels=len(labels) or 2,
        id2label=dict(enumerate(labels)) or ID2LABEL,
        label2id={name: i for i, name in enumerate(labels)} or LABEL2ID,
    )
    BertForSequenceClassification(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if PREBUILT_BUNDLE:
        pytest.skip("needs torch: not in the base install this run tests")
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def export_tiny_bundle(model_dir: Path, data_dir: Path, bundle: Path, **options: object) -> Path:
    """A tiny random model exported like any bundle; its accuracy means nothing, so the lossy variants' limits (drop
    and label agreement) are lifted."""
    from sst2dist.export.bundle import export_bundle

    limits = {"max_accuracy_drop": 100.0, "min_label_agreement": 0.0}
    export_bundle(model_dir, bundle, data=str(data_dir), max_verify_samples=64, **limits, **options)
    return bundle


@pytest.fixture(scope="session")
def tiny_bundle_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle exported from `tiny_model_dir` with fp32, optimized and int8 variants (no OpenVINO ones)."""
    if PREBUILT_BUNDLE:
        return Path(PREBUILT_BUNDLE)
    return build_tiny_bundle(request.getfixturevalue("tiny_model_dir"), tmp_path_factory.mktemp("tiny-bundle"))


@pytest.fixture(scope="session")
def ov_bundle(tiny_model_dir: Path, sst2_sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model exported with its OpenVINO variants (openvino-f32, -bf16 where the CPU has bf16, -int8)."""
    return export_tiny_bundle(
        tiny_model_dir, sst2_sample_dir, tmp_path_factory.mktemp("ov-bundle") / "bundle", openvino="on"
    )


def build_tiny_bundle(model_dir: Path, folder: Path) -> Path:
    """Its timings count as taken on a quiet machine whatever the test machine's load, so the suite's default choices
    are the recorded ones; tests of a busy recording make their own."""
    bundle = export_tiny_bundle(model_dir, SST2_SAMPLE_DIR, folder / "bundle", openvino="off")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["variant_timings"]["machine"]["busy"] = False
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def import_blocker(*packages: str) -> str:
    """Python source that makes importing any of `packages` fail in the process that runs it (written as a
    sitecustomize.py on PYTHONPATH, or as the start of a `python -c` script): an install without them."""
    return f"""
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {packages!r}:
            raise ImportError(f"No module named {{name!r}} (blocked in this test)")
        return None

sys.meta_path.insert(0, Block())
"""


def make_tiny_mpnet(path: Path, seed: int = 0, hidden_size: int = 32, heads: int = 2) -> Path:
    """A random 2-layer MPNet classifier (no token type ids, pad id 1) with an MPNet tokenizer built from the
    packaged MiniLM's WordPiece vocabulary: the teacher's architecture, without its 440 MB."""
    import torch
    from transformers import MPNetConfig, MPNetForSequenceClassification, MPNetTokenizerFast

    from sst2dist.modeling import DEFAULT_MODEL, ID2LABEL, LABEL2ID, resolve_model

    torch.manual_seed(seed)
    wordpieces = (Path(resolve_model(DEFAULT_MODEL)) / "vocab.txt").read_text(encoding="utf-8").splitlines()
    path.mkdir(parents=True)
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["<s>", "<pad>", "</s>", "<unk>", *wordpieces, "<mask>"]) + "\n", encoding="utf-8")
    tokenizer = MPNetTokenizerFast(vocab_file=str(vocab), model_max_length=512)
    config = MPNetConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=heads,
        intermediate_size=2 * hidden_size,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=2,
        id2label=ID2LABEL,
        label2id=LABEL2ID,
    )
    MPNetForSequenceClassification(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def accelerator():
    """A CPU Accelerator, its global state reset afterwards so the next test starts clean."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


# A short distillation run of the tiny models that checkpoints at step 3 (for the resume checks) and logs every step.
SHORT_RUN: list[object] = [
    "--batch-size", 16, "--epochs", 2, "--eval-every", 3, "--save-every", 3, "--keep-checkpoints", 5,
    "--log-every", 1, "--lr", 1e-3,
]  # fmt: skip


def run_train(*args: object) -> subprocess.CompletedProcess:
    """`python -m sst2dist.train ARGS` from the repository root, offline: the real script, as a user runs it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "sst2dist.train", *map(str, args)]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def resume_copy(straight: Path, resumed: Path, step: int, options: list[object]) -> subprocess.CompletedProcess:
    """Start `resumed` from a copy of `straight`'s checkpoint at `step` and its train_config.json, then run the
    same options with --resume."""
    (resumed / "checkpoints").mkdir(parents=True)
    name = f"step-{step:08d}"
    shutil.copytree(straight / "checkpoints" / name, resumed / "checkpoints" / name)
    shutil.copy(straight / "train_config.json", resumed / "train_config.json")
    return run_train(*options, "--resume")


if __name__ == "__main__":  # python tests/conftest.py DIR: the tiny bundle in DIR/bundle, for `make test-py310`
    folder = Path(sys.argv[1])
    print(build_tiny_bundle(make_tiny_model(folder / "model"), folder))


def fit_discriminant_head(model, tokenizer, sst2_dir: Path, margin: float, samples: int = 512) -> None:
    """A linear-discriminant head on `samples` train sentences' pooled features, scaled so the logit margins'
    spread is `margin`: a real classifier in seconds, for the int8 gate and hold check to judge."""
    import torch

    from sst2dist.data import load_sst2

    train = load_sst2(str(sst2_dir), max_train_samples=samples)["train"]
    labels = torch.tensor(train["label"])
    with torch.inference_mode():
        encoded = tokenizer(list(train["sentence"]), padding=True, truncation=True, return_tensors="pt")
        features = model.bert(**encoded).pooler_output.double()
    means = torch.stack([features[labels == c].mean(0) for c in (0, 1)])
    within = torch.cov((features - means[labels]).T) + 1e-3 * torch.eye(features.shape[1], dtype=torch.float64)
    direction = torch.linalg.solve(within, means[1] - means[0])
    direction *= margin / ((features - means.mean(0)) @ direction).std()
    offset = means.mean(0) @ direction
    with torch.no_grad():
        model.classifier.weight.copy_(torch.stack([-direction / 2, direction / 2]))
        model.classifier.bias.copy_(torch.stack([offset / 2, -offset / 2]))
