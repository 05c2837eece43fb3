"""What the integrity check adds to loading a bundle: reading and hashing (runtime.read_verified) the files a
Classifier loads (config.json, tokenizer.json, the chosen variant's model) against the whole `Classifier(...)` load,
medians of a few runs.

    .venv/bin/python bench/integrity_load.py --bundle export/minilm --variant optimized

Run it on a quiet machine: the figures are wall-clock times. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from sst2dist.runtime import SUPPORT_FILES, VARIANT_FILES, Classifier, read_manifest, read_verified


def median_ms(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(bundle: Path, variant: str, repeats: int) -> dict:
    manifest = read_manifest(bundle)
    files = [*SUPPORT_FILES, VARIANT_FILES[variant]]
    size = sum((bundle / name).stat().st_size for name in files)
    hash_ms = median_ms(lambda: [read_verified(bundle, manifest, name) for name in files], repeats)
    load_ms = median_ms(lambda: Classifier(bundle, variant=variant, threads=1), repeats)
    return {
        "bundle": str(bundle),
        "variant": variant,
        "files": files,
        "bytes_hashed": size,
        "hash_ms": round(hash_ms, 2),
        "load_ms_with_hash": round(load_ms, 2),
        "hash_share_of_load": round(hash_ms / load_ms, 3),
        "sha256_mb_per_s": round(size / 1e6 / (hash_ms / 1000), 1),
        "repeats": repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--variant", default="optimized")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(measure(args.bundle, args.variant, args.repeats), indent=2))


if __name__ == "__main__":
    main()
