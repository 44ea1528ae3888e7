# mgdet: `make demo` runs the whole pipeline on a synthetic set, `make test` runs the tests.
# Every target sets up the virtualenv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mgdet-installed

# extraction
VIDEOS ?= data/videos
OUT ?= cache
DATASET ?=
ROOT ?=
WEIGHTS ?= kinetics
DEVICE ?= auto
EXTRACT_ARGS ?=
# detection
CONFIG ?= configs/synthetic-small.toml
FEATURES ?=
ANNOTATIONS ?=
RUN ?= runs/default
SUBSET ?= test
TRAIN_ARGS ?=
# tests
PYTEST_ARGS ?=

.PHONY: help venv features test bench lint

help: ## list the targets and their variables
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo
	@echo "Variables (make TARGET VAR=value):"
	@echo "  VIDEOS=$(VIDEOS)  videos or folders to extract (features)"
	@echo "  OUT=$(OUT)  feature cache root (features)"
	@echo "  WEIGHTS=$(WEIGHTS)  kinetics | random | PATH.pyth (features)"
	@echo "  DEVICE=$(DEVICE)  auto | cpu | cuda (features)"
	@echo "  EXTRACT_ARGS=  extra options for python -m extract features"
	@echo "  PYTEST_ARGS=  extra options for pytest (test)"
	@echo "  PYTHON=$(PYTHON)  interpreter that creates the virtualenv"

venv: $(STAMP) ## create .venv and install mgdet with its dev tools

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# torch first, pinned, unless the venv already has one (a CUDA machine may bring its own).
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

features: $(STAMP) ## extract I3D features: make features VIDEOS=data/videos OUT=cache
	$(PY) -m extract features $(VIDEOS) --out $(OUT) --weights $(WEIGHTS) --device $(DEVICE) $(EXTRACT_ARGS)

test: $(STAMP) ## run the test suite
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP) ## print the benchmarks' figures (bench/*.py)
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint: $(STAMP) ## ruff check
	$(PY) -m ruff check .
