"""Every notebook under notebooks/ runs top to bottom in a headless kernel (nbclient).

Each notebook is executed in its own kernel, started with this interpreter (the project's
venv) through a kernelspec written to a temporary directory, so no other "python3"
kernel on the machine can be picked up by mistake. A cell that raises fails the test with
the cell and its traceback; so does a notebook that leaves raylite processes or object
store segments behind, or that takes longer than its budget (3 minutes on 2 cores).
Notebooks are committed without outputs, so the diff of a notebook is its code.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from raylite.testing import assert_no_leaks

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNEL = "raylite-test"
CELL_TIMEOUT = 150   # seconds, one cell
BUDGET = 180         # seconds, a whole notebook (the notebooks' promise)
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    """A kernelspec for this interpreter, first on JUPYTER_PATH while the tests run."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "raylite tests", "language": "python"}))
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(root)] + ([old] if old else []))
    try:
        yield KERNEL
    finally:
        if old is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = old


def code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_there_are_notebooks():
    names = {p.name for p in NOTEBOOKS}
    assert {"00_quickstart.ipynb", "01_zero_copy.ipynb",
            "02_placement_and_autoscaling.ipynb", "03_serve.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_clean(path):
    """Stored without outputs, on the python3 kernel, ending with raylite.shutdown()."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
             and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; strip them " \
                      "(jupyter nbconvert --clear-output --inplace)"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    assert "raylite.shutdown()" in code_cells(nb)[-1].source, \
        f"{path.name} must end by shutting the cluster down"


@pytest.mark.timeout(BUDGET + 60)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, kernel_name):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name=kernel_name, timeout=CELL_TIMEOUT, startup_timeout=60,
        resources={"metadata": {"path": str(path.parent)}})  # run where `make lab` does
    start = time.monotonic()
    client.execute()  # raises CellExecutionError naming the cell that failed
    took = time.monotonic() - start
    errors = [o for c in code_cells(nb) for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    # the kernel is gone now: everything the notebook started must be gone with it
    assert_no_leaks(timeout=10)
    assert took < BUDGET, f"{path.name} took {took:.0f} s (budget {BUDGET} s)"
    # views (``raylite.widgets``) were displayed as live widgets, not only as text
    source = "".join(c.source for c in code_cells(nb))
    if "raylite.widgets import" in source:
        shown = [o for c in code_cells(nb) for o in c.outputs
                 if WIDGET_MIME in o.get("data", {})]
        assert shown, f"{path.name} imports raylite.widgets but displayed no widget"


def test_binder_environment():
    """Binder gets the CPU build of the torch the Makefile pins, and raylite's extras from
    pyproject.toml (so the two environments cannot drift apart)."""
    binder = ROOT / "binder"
    pin = next(ln for ln in (ROOT / "Makefile").read_text().splitlines()
               if ln.startswith("TORCH"))
    torch_req = pin.split(":=")[1].strip()
    reqs = [ln.strip() for ln in (binder / "requirements.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in reqs
    assert torch_req in reqs
    post = binder / "postBuild"
    assert os.access(post, os.X_OK)
    assert 'pip install --no-cache-dir -e ".[all]"' in post.read_text()
