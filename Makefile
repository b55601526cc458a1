# pneumobench: `make run` (set up + benchmark), `make test` (set up + tests), `make docs` (the site).
# Both create .venv on first use. Override the interpreter with PYTHON=python3.11, the torch
# wheels with TORCH="torch==X torchvision==Y", and pass run options with ARGS="--device cuda".
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.14.1 torchvision==0.29.1
ARGS ?=

# Offline machines: a copy of PneumoniaMNIST at ../shared/data/medmnist/ beside the repo is used when
# present and BENCH_DATA_FILE is not set (elsewhere medmnist downloads the official file).
SHARED_DATA := $(wildcard ../shared/data/medmnist/pneumoniamnist_reconstructed_unverified.npz)
ifeq ($(BENCH_DATA_FILE),)
ifneq ($(SHARED_DATA),)
export BENCH_DATA_FILE := $(abspath $(SHARED_DATA))
endif
endif

.PHONY: setup run test benchmark docs clean-venv

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test,ray,docs]"
	touch $@

setup: $(VENV)/.installed

run: setup
	$(PY) -m bench run $(ARGS)

test: setup
	$(PY) -m pytest -q

benchmark: setup
	$(PY) -m pytest tests/benchmarks --benchmark-only --benchmark-save=run --benchmark-storage=results/benchmarks

docs: setup
	$(VENV)/bin/mkdocs build --strict

clean-venv:
	rm -rf $(VENV)
