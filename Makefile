# The kit's commands. Every target first makes sure the virtual environment exists (plain pip:
# `torch==2.13.0` takes the local CPU wheel on CPU machines and the CUDA wheel on GPU machines).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PYTHONHASHSEED ?= 0

.PHONY: venv demo test lab clean-venv

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

## make demo: a short f-DPG training on the enumerable toy, prints the table and writes a figure.
demo: $(STAMP)
	$(BIN)/python scripts/toy_demo.py --out figures/toy_demo

## make test: every test (unit tests of the mathematics, sampler, targets, training, data).
test: $(STAMP)
	$(BIN)/python -m pytest -q tests

## make lab: JupyterLab on the notebooks.
lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

clean-venv:
	rm -rf $(VENV)
