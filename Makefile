# The kit's commands. Every target first makes sure the virtual environment exists (plain pip:
# `torch==2.13.0` takes the local CPU wheel on CPU machines and the CUDA wheel on GPU machines).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PYTHONHASHSEED ?= 0
TEST_WORKERS ?= 2

.PHONY: venv demo test lab notebooks figures render claims nbval nbval-update bench clean-venv

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

## make test: every test (unit tests of the mathematics, sampler, targets, training, data), on TEST_WORKERS
## processes (default 2, one per core; pytest-xdist, one test file per worker).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

## make notebooks: every notebook at its smoke defaults (papermill), into a temp dir.
notebooks: $(STAMP)
	$(BIN)/python scripts/run_notebooks.py --preset smoke

## make figures: the cpu preset of every notebook: writes data/results/<experiment>/cpu and figures/<experiment>.
figures: $(STAMP)
	$(BIN)/python scripts/run_notebooks.py --preset cpu

## make render: the cpu preset's outputs of every numbered notebook (00-08), rendered from the committed results
## (nothing is trained; evaluation records not yet saved are computed once into data/results) and stored in place.
render: $(STAMP)
	$(BIN)/python scripts/render_notebooks.py

## make claims: rebuilds every verdict table in README.md and docs/RESULTS_*.md from data/results (one rule:
## fdpg_core/kit/verdicts.py); `scripts/make_claims.py --check` only reports what is out of date.
claims: $(STAMP)
	$(BIN)/python scripts/make_claims.py

## make nbval: re-executes the numbered notebooks (00-08); nbval compares the cells marked NBVAL_CHECK_OUTPUT
## (00's exact targets) with their stored output.
nbval: $(STAMP)
	$(BIN)/python -m pytest --nbval-lax -p no:cacheprovider notebooks/[0-9][0-9]_*.ipynb

## make nbval-update: refresh the stored summary outputs after a deliberate change (review the diff).
nbval-update: $(STAMP)
	$(BIN)/python scripts/run_notebooks.py --preset smoke --update-checks

## make bench: sampler and f-DPG step against generate()-based baselines; writes figures/bench/<machine>.{json,md}.
bench: $(STAMP)
	$(BIN)/python scripts/bench.py

## make lab: JupyterLab on the notebooks, on this machine only (127.0.0.1); open the URL with its token that it prints.
## As root (a container) it adds --allow-root and opens no browser. LAB_PORT picks the port (the next free one if taken).
LAB_PORT ?= 8888
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root --ServerApp.open_browser=False)
lab: $(STAMP)
	@echo "Starting JupyterLab on http://127.0.0.1:$(LAB_PORT)/lab: open the URL with ?token=... printed below (Ctrl-C stops it)"
	$(BIN)/jupyter lab notebooks/ --ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT) $(LAB_ROOT)

clean-venv:
	rm -rf $(VENV)
