"""How far can distillation from our own fine-tuned models go? Accuracy of every ensemble of trained runs.

Averages the softmax outputs of every combination of the given fine-tuned models on the SST-2 validation set.
If the best ensemble of N students is not above a target, distilling that ensemble into one student cannot be
expected to reach it either: a larger or different teacher is needed.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/ensemble_ceiling.py --data ../shared/data/sst2 \\
        runs/minilm-s0/model runs/minilm-s1/model runs/minilm-s42/model

Writes bench/results/ensemble_ceiling.json and .md (or --output DIR).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

BATCH = 64


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help="fine-tuned model folders (save_pretrained)")
    parser.add_argument("--data", required=True, help="SST-2 folder with dev.tsv, or a hub id")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    return parser.parse_args()


def validation_set(data: str) -> tuple[list[str], np.ndarray]:
    from sst2dist.data import load_sst2

    validation = load_sst2(data, max_train_samples=1)["validation"]
    return list(validation["sentence"]), np.array(validation["label"])


def probabilities(model_dir: Path, sentences: list[str]) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    batches = []
    with torch.no_grad():
        for start in range(0, len(sentences), BATCH):
            inputs = tokenizer(sentences[start : start + BATCH], padding=True, truncation=True, return_tensors="pt")
            batches.append(torch.softmax(model(**inputs).logits.float(), dim=-1).numpy())
    return np.concatenate(batches)


def main() -> None:
    args = parse_args()
    sentences, labels = validation_set(args.data)
    probs = {str(path): probabilities(path, sentences) for path in args.models}
    ensembles = []
    for size in range(1, len(probs) + 1):
        for members in itertools.combinations(probs, size):
            mean = np.mean([probs[m] for m in members], axis=0)
            ensembles.append({"members": list(members), "accuracy": float((mean.argmax(1) == labels).mean())})
    best_by_size = {
        size: max((e for e in ensembles if len(e["members"]) == size), key=lambda e: e["accuracy"])
        for size in range(1, len(probs) + 1)
    }
    report = {"validation_rows": len(labels), "ensembles": ensembles, "best_by_size": best_by_size}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "ensemble_ceiling.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Ensembles of fine-tuned runs on the SST-2 validation set", "", "| models | accuracy | members |"]
    lines += ["|---:|---:|---|"]
    for entry in sorted(ensembles, key=lambda e: (len(e["members"]), -e["accuracy"])):
        members = ", ".join(Path(m).parent.name for m in entry["members"])
        lines.append(f"| {len(entry['members'])} | {entry['accuracy']:.4f} | {members} |")
    (args.output / "ensemble_ceiling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
