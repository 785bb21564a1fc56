# Quick start (see README.md):
#   make lab    set everything up, then open JupyterLab on notebooks/
#   make test   set everything up, then run the tests
#
# Setup is idempotent: .venv/.stamp is rebuilt only when pyproject.toml changes.
# torch is always pinned to exactly torch==2.13.0 (never unpinned). The [ray] extra (Ray
# 2.53) is for the Ray-backend tests (tests/ray_backend/).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.stamp
TORCH  := torch==2.13.0

.PHONY: setup lab test bench bench-env clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing raylite[all,dev,ray] and $(TORCH) into $(VENV) ..."
	@$(PY) -m pip install -q -e ".[all,dev,ray]" "$(TORCH)"
	@touch $@

# (--allow-root only where JupyterLab would otherwise refuse: containers running as root)
lab: setup
	$(VENV)/bin/jupyter lab --ip=127.0.0.1 --notebook-dir=notebooks --no-browser \
		$(if $(filter 0,$(shell id -u)),--allow-root)

test: setup
	$(PY) -m pytest -x -q --durations=25 tests

# The benchmark suite (benchmarks/README.md): raylite beside the peers it finds and the
# machine's limits. BENCH_ARGS=--quick for a short run; `make bench-env` installs the peers.
bench: setup
	$(PY) -m benchmarks $(BENCH_ARGS)

# The peers (Ray 2.53 with Serve, Dask, ipyparallel; the [bench] extra) in a venv of their
# own, never in .venv: the suite finds .bench-venv/bin/python by itself.
BENCH_VENV := .bench-venv
bench-env:
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q -e ".[bench]" "$(TORCH)"

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
