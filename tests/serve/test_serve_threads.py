"""`serve`'s workers share one tokenizer pool: it is sized for all of them (workers × threads), not for one run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import json, os, sys
from sst2dist.serve.limits import ServeLimits, ServeOptions
from sst2dist.serve.server import load_for_serving

tasks = lambda: len(os.listdir("/proc/self/task"))
options = ServeOptions(threads=1, limits=ServeLimits(workers=2), variant="fp32")
classifier = load_for_serving(sys.argv[1], options)
loaded = tasks()
classifier.encode(["a gripping, funny film about very little"] * 4000)
print(json.dumps({"tokenizer": tasks() - loaded, "rayon": os.environ["RAYON_NUM_THREADS"]}))
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs for two workers' pool")
def test_the_tokenizer_pool_is_sized_for_every_worker(tiny_bundle_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAYON_NUM_THREADS"}
    env["TOKENIZERS_PARALLELISM"] = "true"  # a user who turned the pool on: serve leaves it on
    done = subprocess.run([sys.executable, "-c", PROBE, str(tiny_bundle_dir)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    probe = json.loads(done.stdout.splitlines()[-1])
    assert probe == {"tokenizer": 2, "rayon": "2"}, probe
