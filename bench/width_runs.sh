#!/bin/bash
# Issue 28's width runs, one after another (each stage skipped when its output exists, and a training stage resumes from
# its checkpoint, so a killed run goes on by rerunning this): the 700-step lr-5e-5 teacher (seed 42) pruned to 0.50 and 0.25 of its
# encoder FLOPs, each recovered for 320 steps with 3 seeds, the L6/L3 students of `make demo`'s recipe, the bundles
# (seed 42 of each pruned entry: chosen before the runs, not by dev), one `bench --menu ... --anchors` run, a
# second teacher seed and p25 recovered for a whole epoch (seeds 42 and 1).
#   [THREADS=1] bash bench/width_runs.sh [DATA] [OUT]     (from the repository root; default ../shared/data/sst2, runs/w2)
# Results: bench/results/width/ (copied by hand from OUT; OUT is not committed).
set -u
D=${1:-../shared/data/sst2}; W=${2:-runs/w2}; PY=.venv/bin/python; S=.venv/bin/sst2dist
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# THREADS=1 (or a file OUT/threads holding 1, read at each stage) pins the stage to CPU 0 with one thread, so other
# work can share the machine: a two-thread torch job beside another busy process waits at its barriers (8.6 s a step
# against 1.2 s alone, measured here). The menu always runs on every CPU: it times.
runner() { [ "$(cat "$W/threads" 2>/dev/null || echo "${THREADS:-0}")" = 1 ] && echo "env OMP_NUM_THREADS=1 taskset -c 0"; }
mkdir -p "$W"; LOG=$W/chain.log
stamp() { echo "=== $(date +%H:%M:%S) $*" >> "$LOG"; }
train() {
  local out=$1; shift
  if [ -f "$out/metrics.json" ]; then stamp "skip $out"; return; fi
  local fresh=--overwrite; ls "$out"/checkpoints/step-*/trainer_state.json >/dev/null 2>&1 && fresh=--resume
  stamp "train $out $fresh $*"; $(runner) $PY -m sst2dist.train --data "$D" --output-dir "$out" $fresh "$@" >> "$out.log" 2>&1
  stamp "done $out rc=$?"
}
bundle() {
  local model=$1 out=$2 made
  # skipped only when that bundle was exported from this very model: export/ is shared with the make targets
  made=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['source']['model_dir'])" "$out/manifest.json" 2>/dev/null)
  if [ "$made" = "$(realpath "$model")" ]; then stamp "skip $out"; return; fi
  stamp "export $model -> $out"
  $(runner) $S export-onnx "$model" --output "$out" --data "$D" --quantize static --force --keep-failed > "$W/$(basename "$out")-export.log" 2>&1
  stamp "done export $out rc=$?"
}
TEACHER="--model packaged:all-mpnet-base-v2 --epochs 2 --max-steps 700 --lr 5e-5 --batch-size 32 --eval-every 100 --save-every 100"
train "$W/t700-s42" $TEACHER --seed 42
SOURCE=$W/t700-s42/model; stamp "pruning source = $SOURCE"
for cost in 50 25; do
  if [ ! -f "$W/p$cost/model/prune.json" ]; then
    stamp "prune p$cost"
    $(runner) $S prune "$SOURCE" --output "$W/p$cost/model" --cost "0.$cost" --data "$D" --samples 1536 --batch-size 32 > "$W/p$cost.log" 2>&1
  fi
done
RECOVER="--teacher packaged:all-mpnet-base-v2-sst2 --distill-alpha 0.2 --distill-temperature 2 --layer-teacher $SOURCE
  --distill-hidden 1 --lr 3e-5 --batch-size 32 --max-steps 320 --eval-every 40 --save-every 80"
for cost in 50 25; do for seed in 42 1 2; do train "$W/p$cost-rec-s$seed" --model "$W/p$cost/model" $RECOVER --seed $seed; done; done
LOGITS="--teacher packaged:all-mpnet-base-v2-sst2 --distill-alpha 0.2 --distill-temperature 2"
train "$W/l6" $LOGITS --time-budget 10
train "$W/l3" --model "$W/l6/model" --init-layers 0,2,4 --lr 1e-4 $LOGITS --time-budget 5
bundle "$SOURCE" export/teacher
for cost in 50 25; do bundle "$W/p$cost-rec-s42/model" "export/p$cost"; done
bundle "$W/l6/model" export/l6
bundle "$W/l3/model" export/l3
stamp "menu (alone on the machine: it times)"
$S bench --data "$D" --menu l6=export/l6 --menu l3=export/l3 --menu p50=export/p50 --menu p25=export/p25 \
  --menu teacher=export/teacher --anchors --backends ort-fp32,ort-int8,ort-static-int8,openvino-bf16,openvino-int8 \
  --latency-samples 400 --output "$W/menu-classes" > "$W/menu.log" 2>&1   # all 7 variants: 23 GB, killed on 24 GB
stamp "done menu rc=$?"
train "$W/t700-s1" $TEACHER --seed 1   # the teacher's second seed, after the menu: it does not feed it
# p25 recovered for one whole epoch (2,105 steps), seed 42: its 320-step curve was still rising; after the menu too
train "$W/p25-e1-s42" --model "$W/p25/model" ${RECOVER/--max-steps 320 --eval-every 40 --save-every 80/--epochs 1 --eval-every 200 --save-every 200} --seed 42
# seed 1 of the same (stopped at step 800 when the session ended: resumes from its checkpoint)
train "$W/p25-e1-s1" --model "$W/p25/model" ${RECOVER/--max-steps 320 --eval-every 40 --save-every 80/--epochs 1 --eval-every 200 --save-every 200} --seed 1
