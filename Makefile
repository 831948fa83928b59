# Two commands: `make run` (the demo workflow + report) and `make test` (lint + test suite).
# Both create .venv with pip on first use. GPU users: create .venv and install the CUDA torch
# build of their choice first (see README); an importable torch is never replaced.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
CORES ?= all
BIN := $(VENV)/bin

.PHONY: run test lint report clean-results venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

run: venv
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --cores 1 --report results/report.html
	@echo "report: results/report.html   summary: results/tables/summary.md"

lint: venv
	$(BIN)/ruff check src scripts tests benchmarks
	$(BIN)/snakemake --lint

test: venv lint
	$(BIN)/pytest

clean-results:
	rm -rf results .snakemake
