# Two commands do all the set-up: `make train` and `make test` (see README.md).
# TORCH picks the PyTorch that goes in first: the CPU build by default; `make train TORCH=`
# keeps the torch of the python3 on your PATH (e.g. your CUDA build) by giving the venv
# access to its site-packages.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.scaleq-installed
VENV_FLAGS := $(if $(strip $(TORCH)),,--system-site-packages)
PYTEST_ARGS ?=

.PHONY: setup train test lint gpu-check

setup: $(STAMP)

# Re-runs only when pyproject.toml changes: a second `make` installs nothing. torch-cluster builds
# from source against the torch installed first, so no build isolation; its C++ extensions
# compile side by side on every core (setuptools reads DIST_EXTRA_CONFIG).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel numpy
	$(if $(strip $(TORCH)),$(PIP) install --quiet "$(TORCH)")
	printf '[build_ext]\nparallel = %s\n' "$$(nproc)" > $(VENV)/build_ext.cfg
	DIST_EXTRA_CONFIG=$(abspath $(VENV))/build_ext.cfg $(PIP) install --no-build-isolation -e '.[test,all]'
	touch $@

train: $(STAMP)
	$(PY) launch/train.py

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# On a CUDA machine: every GPU part end to end in about 8 minutes (see docs/benchmarks.md, "Checking a GPU
# machine"). Installs nothing: the venv's python if there is one, else $(PYTHON) as it is.
# GPU_CHECK_ARGS="--budget-s 900" or "--device cpu --quick" pass through.
GPU_CHECK_ARGS ?=
gpu-check:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) launch/gpu_check.py $(GPU_CHECK_ARGS)
