# Two commands: `make demo` (end-to-end pipeline on the shared data) and `make test`.
# Each creates .venv on first use. torch/torchvision come from the local wheel store;
# facenet-pytorch 2.5.3 is installed with --no-deps so pip never swaps torch/torchvision.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
LRFR_DATA ?= $(shell if [ -d ../shared/data ]; then cd ../shared/data && pwd; else echo $(CURDIR)/data; fi)
export LRFR_DATA
DEMO_WS ?= $(CURDIR)/lrfr-workspace
PYTEST_ARGS ?=

.PHONY: install test lint test-fast demo bench compare clean

$(BIN)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q --no-deps facenet-pytorch==2.5.3
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

# Lint first (pyflakes, import order, bugbear: config in pyproject.toml), then the suite.
test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

demo: install
	LRFR_WORKSPACE=$(DEMO_WS) bash scripts/demo.sh

# The thesis comparison: five margin losses with Cross-Resolution Batches, LFW View 2 HR-LR table.
compare: install
	LRFR_WORKSPACE=$(DEMO_WS) $(BIN)/python benchmarks/compare_losses.py $(COMPARE_ARGS)

bench: install
	$(BIN)/python benchmarks/degrade.py
	$(BIN)/python benchmarks/align.py
	$(BIN)/python benchmarks/eval.py

clean:
	rm -rf $(VENV) lrfr-workspace .pytest_cache
