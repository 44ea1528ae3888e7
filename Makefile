# mgdet: `make demo` runs the whole pipeline on a synthetic set, `make test` runs the tests.
# Every target sets up the virtualenv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mgdet-installed
# torch: on a machine without an NVIDIA GPU, the CPU build from PyTorch's CPU index (a venv of
# about 1.3 GB); with a GPU, or when that index cannot be reached, PyPI's CUDA build (about 5.9 GB;
# it runs on a CPU too). TORCH_BUILD=cpu|cuda forces the choice.
TORCH_VERSION ?= 2.14.1
TORCHVISION_VERSION ?= 0.29.1
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_BUILD ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)
# PyPI's x86_64 Linux wheels are CUDA builds; elsewhere (aarch64, macOS) they are CPU builds already.
TORCH_CPU_WHEEL := $(if $(filter x86_64,$(shell uname -m)),$(filter Linux,$(shell uname -s)),)

# extraction
VIDEOS ?= data/videos
OUT ?= cache
DATASET ?=
ROOT ?=
WEIGHTS ?= kinetics
MODEL ?= i3d_r50
DEVICE ?= auto
EXTRACT_ARGS ?=
# detection
CONFIG ?= configs/smg.toml
FEATURES ?= $(OUT)
ANNOTATIONS ?= $(if $(DATASET),data/$(DATASET)/annotations.json,)
RUN ?= runs/$(basename $(notdir $(CONFIG)))
SUBSET ?= test
TRAIN_ARGS ?=
# ablation
CONFIGS ?= configs/ablations-small
ABLATE_OUT ?= runs/ablate-$(notdir $(CONFIGS))
ABLATE_ARGS ?=
# prediction
VIDEO ?=
# streaming
SOURCE ?=
STREAM_ARGS ?=
# demo
DEMO_ARGS ?=
# clip classification (classify/)
CLS_DATA ?= data/imigue-synthetic
CLS_CONFIG ?= configs/classify/fusion-small.toml
CLS_RUN ?= runs/cls-demo
CLS_ARGS ?=
# tests
PYTEST_ARGS ?=

.PHONY: help venv demo demo-cls train-cls features convert train eval ablate predict stream report test bench lint

help: ## list the targets and their variables
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo
	@echo "Variables (make TARGET VAR=value):"
	@echo "  VIDEOS=$(VIDEOS)  videos or folders to extract (features)"
	@echo "  OUT=$(OUT)  feature cache root (features)"
	@echo "  MODEL=$(MODEL)  i3d_r50 | inception_i3d (features, weights)"
	@echo "  WEIGHTS=$(WEIGHTS)  kinetics | random | PATH (.pyth, state_dict, runs/NAME/checkpoints/best.pt)"
	@echo "  DEVICE=$(DEVICE)  auto | cpu | cuda (features)"
	@echo "  EXTRACT_ARGS=  extra options for python -m extract features, e.g. \"--save-frames --frames-short-side 128\""
	@echo "  DATASET=smg|imigue ROOT=path  a dataset release as it is (features, convert, train)"
	@echo "  CONFIG=$(CONFIG)  stage-two config (train)"
	@echo "  FEATURES=$(FEATURES)  feature set, or a cache root holding one (train)"
	@echo "  ANNOTATIONS=$(ANNOTATIONS)  canonical annotations.json (train)"
	@echo "  RUN=$(RUN)  run directory (train, eval, predict, report)"
	@echo "  SUBSET=$(SUBSET)  subset to evaluate (eval, report)"
	@echo "  CONFIGS=$(CONFIGS)  folder of configs (ablate); ABLATE_OUT=runs/ablate-<folder>"
	@echo "  ABLATE_ARGS=  extra options, e.g. --baselines probe or --set train.epochs=10 (ablate)"
	@echo "  VIDEO=  video file(s) or folder (predict)"
	@echo "  SOURCE=  video file, /dev/video0 or a URL FFmpeg opens (stream)"
	@echo "  STREAM_ARGS=  extra options, e.g. \"--realtime --hop 8\" (stream)"
	@echo "  TRAIN_ARGS=  extra options, e.g. --set train.epochs=10 or --resume (train)"
	@echo "  DEMO_ARGS=  extra options for python -m detect demo, e.g. --videos 4 (demo)"
	@echo "  CLS_DATA=$(CLS_DATA)  iMiGUE root: labels and OpenPose skeletons (demo-cls, train-cls)"
	@echo "  CLS_CONFIG=$(CLS_CONFIG)  classifier config (train-cls)"
	@echo "  CLS_RUN=$(CLS_RUN)  classifier run directory (demo-cls, train-cls)"
	@echo "  CLS_ARGS=  extra options, e.g. --set train.epochs=10 (train-cls)"
	@echo "  PYTEST_ARGS=  extra options for pytest (test)"
	@echo "  PYTHON=$(PYTHON)  interpreter that creates the virtualenv"

venv: $(STAMP) ## create .venv and install mgdet with its dev tools

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# torch first, pinned, unless the venv already has one (a CUDA machine may bring its own).
	@$(PY) -c "import torch" 2>/dev/null || { \
	  if [ "$(TORCH_BUILD)" = cpu ] && [ -n "$(TORCH_CPU_WHEEL)" ]; then \
	    echo "no NVIDIA GPU: torch $(TORCH_VERSION) CPU build from $(TORCH_CPU_INDEX)"; \
	    $(PY) -m pip install -q --retries 1 --index-url $(TORCH_CPU_INDEX) \
	      torch==$(TORCH_VERSION)+cpu torchvision==$(TORCHVISION_VERSION)+cpu 2>/dev/null || { \
	      echo "no CPU build from $(TORCH_CPU_INDEX): PyPI's CUDA build instead (about 5.9 GB; runs on the CPU)"; \
	      $(PY) -m pip install -q torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION); }; \
	  else \
	    $(PY) -m pip install -q torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION); \
	  fi; }
	@$(PY) -c "import torch; print('torch', torch.__version__, '(CUDA build)' if torch.version.cuda else '(CPU build)')"
	$(PY) -m pip install -q -e '.[dev,report]'
	@du -sh $(VENV) 2>/dev/null | awk '{print "virtualenv $(VENV): " $$1}'
	@touch $(STAMP)

demo: $(STAMP) ## the whole pipeline on a rendered synthetic set (about 9 min on 2 idle CPU cores)
	$(PY) -m detect demo --cache $(OUT) --device $(DEVICE) $(if $(filter-out kinetics,$(WEIGHTS)),--weights $(WEIGHTS),) $(DEMO_ARGS)

demo-cls: $(STAMP) ## clip classification on a rendered iMiGUE (2s-AGCN + MViT tokens + token fusion + SwinFace emotion; about 8 min on 2 idle CPU cores)
	$(PY) -m classify render $(CLS_DATA) --videos 40 --minutes 1
	$(PY) -m classify train --data $(CLS_DATA) --config $(CLS_CONFIG) --cache $(OUT)/skeleton --set rgb.cache=$(OUT)/rgb --set emotion.cache=$(OUT)/face --out $(CLS_RUN) $(CLS_ARGS)

train-cls: $(STAMP) ## train + evaluate the clip classifier: make train-cls CLS_DATA=data/imigue CLS_RUN=runs/cls
	$(PY) -m classify train --data $(CLS_DATA) --config $(CLS_CONFIG) --cache $(OUT)/skeleton --set rgb.cache=$(OUT)/rgb --set emotion.cache=$(OUT)/face --out $(CLS_RUN) $(CLS_ARGS)

features: $(STAMP) ## extract I3D features: make features VIDEOS=data/videos OUT=cache (or DATASET=smg ROOT=...)
	$(PY) -m extract features $(if $(DATASET),$(ROOT) --dataset $(DATASET),$(VIDEOS)) --out $(OUT) \
		--model $(MODEL) --weights $(WEIGHTS) --device $(DEVICE) $(EXTRACT_ARGS)

weights: $(STAMP) ## Kinetics weights into the torch hub cache: make weights MODEL=inception_i3d
	$(PY) -m extract weights $(MODEL)

convert: $(STAMP) ## dataset labels to annotations.json: make convert DATASET=smg ROOT=data/smg
	@test -n "$(DATASET)" -a -n "$(ROOT)" || { echo "make convert needs DATASET=smg|imigue and ROOT=path"; exit 2; }
	$(PY) -m detect convert $(DATASET) $(ROOT) --out $(ANNOTATIONS)

train: $(STAMP) $(if $(and $(DATASET),$(ROOT)),convert) ## train: make train CONFIG=configs/smg.toml FEATURES=cache/<key> ANNOTATIONS=... RUN=runs/smg
	@test -n "$(ANNOTATIONS)" -a -n "$(RUN)" || { echo "make train needs ANNOTATIONS=annotations.json (or DATASET=smg|imigue ROOT=path) and RUN=runs/NAME"; exit 2; }
	$(PY) -m detect train --config $(CONFIG) --features $(FEATURES) --annotations $(ANNOTATIONS) \
		--out $(RUN) $(TRAIN_ARGS)

eval: $(STAMP) ## evaluate a run: make eval RUN=runs/smg SUBSET=test
	@test -n "$(RUN)" || { echo "make eval needs RUN=runs/NAME"; exit 2; }
	$(PY) -m detect eval $(RUN) --subset $(SUBSET)

ablate: $(STAMP) ## every config of a folder on one cache: make ablate CONFIGS=configs/ablations FEATURES=cache/<key> ANNOTATIONS=...
	@test -n "$(ANNOTATIONS)" || { echo "make ablate needs FEATURES=feature-set and ANNOTATIONS=annotations.json"; exit 2; }
	$(PY) -m detect ablate --configs $(CONFIGS) --features $(FEATURES) --annotations $(ANNOTATIONS) \
		--out $(ABLATE_OUT) $(ABLATE_ARGS)

predict: $(STAMP) ## detections on new videos: make predict VIDEO=path.mp4 RUN=runs/smg
	@test -n "$(VIDEO)" || { echo "make predict needs VIDEO=file-or-folder and RUN=runs/NAME"; exit 2; }
	$(PY) -m detect predict $(VIDEO) --run $(RUN) $(if $(DATASET),--dataset $(DATASET),)

stream: $(STAMP) ## detections while a video plays: make stream SOURCE=file|/dev/video0|URL RUN=runs/NAME
	@test -n "$(SOURCE)" || { echo "make stream needs SOURCE=file-or-camera-or-URL and RUN=runs/NAME"; exit 2; }
	$(PY) -m detect stream $(SOURCE) --run $(RUN) $(STREAM_ARGS)

report: $(STAMP) ## HTML report of an evaluated run: make report RUN=runs/smg
	$(PY) -m detect report $(RUN) --subset $(SUBSET)

test: $(STAMP) ## run the test suite
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP) ## print the benchmarks' figures (python -m bench.NAME for each bench/NAME.py)
	@for b in $(filter-out __init__ memtrack,$(basename $(notdir $(wildcard bench/*.py)))); do \
	  echo "== python -m bench.$$b"; $(PY) -m bench.$$b || exit 1; done

lint: $(STAMP) ## ruff check
	$(PY) -m ruff check .
