# loradock: `make demo` sets up and runs the app; `make test` sets up and passes the tests.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
GPU ?= 0
BASE_MODEL := models/SmolLM2-135M-Instruct
STAMP := $(VENV)/.installed-$(if $(filter 1,$(GPU)),gpu,cpu)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup model browser demo serve ui test lint clean-venv help

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' Makefile | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(STAMP) $(BASE_MODEL)/loradock-checksum.json ## create .venv, install pinned deps, materialize the base model

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

browser: ## install Debian's Chromium for the browser tests (needs root)
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

lint: setup ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: setup browser lint ## ruff, mypy and the whole test suite (starts one real vLLM server for the session)
	$(VENV)/bin/python -m pytest -q --timeout=900 tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$rc

demo: setup ## run the server (:8000) and the UI (:7860) on the embedded model with the demo adapters
	$(VENV)/bin/loradock demo

serve: setup ## run only the OpenAI-compatible server on :8000
	$(VENV)/bin/loradock serve

ui: setup ## run only the Gradio UI on :7860 against a running server
	$(VENV)/bin/loradock ui

clean-venv: ## remove .venv (models/ and adapters/ are kept)
	rm -rf $(VENV)
