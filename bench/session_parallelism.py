"""One onnxruntime run over all cores, or one single-threaded run per core side by side?

Runs the same validation sentences through one session of a bundle variant, at batch 1 and 8, in three ways:
one caller with `cores` intra-op threads, `cores` callers with one thread each (one session, called concurrently,
as `sst2dist serve --workers` does), and one caller with one thread. Sentences/s, best of 3.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/session_parallelism.py --bundle export/minilm --data ../shared/data/sst2

Writes bench/results/session_parallelism.json and .md (or --output DIR). Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sst2dist.data import load_validation
from sst2dist.environment import usable_cpus
from sst2dist.runtime import Classifier


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, help="bundle folder from `sst2dist export-onnx`")
    parser.add_argument("--data", required=True, help="SST-2 folder with dev.tsv (or a hub id, with `datasets`)")
    parser.add_argument("--variant", default="static-int8", help="bundle variant")
    parser.add_argument("--sentences", type=int, default=400, help="validation sentences per measurement")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    return parser.parse_args()


def sentences_per_second(classifier: Classifier, batches: list[list[str]], callers: int) -> float:
    def run(batch: list[str]) -> None:
        classifier.run(classifier.encode(batch))

    for batch in batches[:10]:
        run(batch)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        with ThreadPoolExecutor(callers) as pool:
            list(pool.map(run, batches))
        best = min(best, time.perf_counter() - started)
    return sum(len(batch) for batch in batches) / best


def main() -> None:
    args = parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    texts = load_validation(args.data, args.sentences)[0]
    cores = usable_cpus()  # the cores this process may use, not the machine's
    ways = {f"1 caller x {cores} threads": (cores, 1), f"{cores} callers x 1 thread": (1, cores), "1 x 1": (1, 1)}
    rows = []
    for batch_size in (1, 8):
        batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
        for name, (threads, callers) in ways.items():
            classifier = Classifier(args.bundle, variant=args.variant, threads=threads)
            rate = sentences_per_second(classifier, batches, callers)
            rows.append({"batch_size": batch_size, "way": name, "sentences_per_second": round(rate, 1)})
            print(json.dumps(rows[-1]), flush=True)
    report = {"bundle": args.bundle, "variant": args.variant, "cores": cores, "sentences": len(texts), "rows": rows}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "session_parallelism.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# One run over {cores} cores, or {cores} single-threaded runs side by side",
        "",
        f"Bundle `{args.bundle}`, variant `{args.variant}`, {len(texts)} SST-2 validation sentences in order.",
        "",
        "| batch size | way | sentences/s |",
        "|---:|---|---:|",
        *(f"| {r['batch_size']} | {r['way']} | {r['sentences_per_second']:.0f} |" for r in rows),
    ]
    (args.output / "session_parallelism.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
