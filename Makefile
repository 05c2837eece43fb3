# make demo DATA=../shared/data/sst2   set up .venv, train -> export-onnx -> bench on the defaults
# make test                           set up .venv if needed, run the whole suite (slow tests included)
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
DATA    ?= stanfordnlp/sst2
RUN     ?= runs/minilm
BUNDLE  ?= export/minilm
REPORT  ?= $(RUN)/bench
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo train export bench test test-fast lint clean

setup: $(VENV)/.installed

# torch 2.13.0 goes in first: it is a CPU build on this machine; a looser torch pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[train,dev]"
	touch $@

demo: setup
	$(BIN)/accelerate launch --config_file accelerate_config.yaml -m sst2dist.train --data $(DATA) --output-dir $(RUN) --overwrite
	$(BIN)/sst2dist export-onnx $(RUN)/model --output $(BUNDLE) --data $(DATA) --quantize static --force --keep-failed
	$(BIN)/sst2dist bench --model $(RUN)/model --bundle $(BUNDLE) --data $(DATA) --output $(REPORT)
	@echo "model: $(RUN)/model  bundle: $(BUNDLE)  report: $(REPORT)/report.md  chart: $(REPORT)/chart.png"

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check sst2dist tests bench
	$(BIN)/ruff format --check sst2dist tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache
