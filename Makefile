# Quick start (see README.md):
#   make lab    set everything up, then open JupyterLab on notebooks/
#   make test   set everything up, then run the tests
#
# Setup is idempotent: .venv/.stamp is rebuilt only when pyproject.toml changes.
# torch is always pinned to exactly torch==2.13.0 (never unpinned).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.stamp
TORCH  := torch==2.13.0

.PHONY: setup lab test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing raylite[all,dev] and $(TORCH) into $(VENV) ..."
	@$(PY) -m pip install -q -e ".[all,dev]" "$(TORCH)"
	@touch $@

# (--allow-root only where JupyterLab would otherwise refuse: containers running as root)
lab: setup
	$(VENV)/bin/jupyter lab --ip=127.0.0.1 --notebook-dir=notebooks --no-browser \
		$(if $(filter 0,$(shell id -u)),--allow-root)

test: setup
	$(PY) -m pytest -x -q tests

bench: setup
	$(PY) benchmarks/core.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
