"""The notebooks 00 to 05, unchanged, run headless on the Ray cluster of this directory
(``RAYLITE_BACKEND=ray`` and ``RAY_ADDRESS`` in the kernel's environment): their
``raylite.init(...)`` joins that cluster, their widgets read Ray's state, and a cell that
needs raylite's own runtime (virtual nodes, the per-init zero-copy flag, the local
autoscaler provider) prints why it is skipped (``raylite.util.own_runtime_only``).

``06_benchmarks`` is not run here: it compares raylite's runtime with Ray's, on its own
clusters (its quick steps run in ``tests/test_notebooks.py``)."""

from __future__ import annotations

import time

import pytest
from test_notebooks import ROOT, WIDGET_MIME, code_cells, kernel_name  # noqa: F401

from raylite.testing import assert_no_leaks

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

BUDGET = 240  # seconds, a whole notebook on Ray (2 cores: Ray's workers start slowly)
SKIPPED = "Skipped on the ray backend: this needs raylite's own runtime"
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").glob("0[0-5]_*.ipynb"))
#: what each notebook must show on Ray (a line of its output), beside running cleanly
EXPECT = {
    "00_quickstart": ["backend='ray'", "(ZeroDivisionError); also a RayTaskError: True",
                      "ray::divide()"],
    "01_zero_copy": ["zero-copy on : in the store: True",  # a view of Ray's plasma file
                     "one node in this cluster: nothing is measured on another node"],
    "02_placement_and_autoscaling": [SKIPPED + " (three virtual nodes in zones a, b and c)",
                                     SKIPPED + " (the local autoscaler provider)"],
    "03_serve": ["ServeView [live]", "Sentiment: HEALTHY, 2/2 replicas"],
    "04_train": [SKIPPED + " (virtual nodes; this joins the Ray cluster instead)"],
    "05_llm": ["RayliteContext(backend='ray'", "LLMView [live]",
               "404: The model 'no-such-model' does not exist"],
}


def outputs_text(nb) -> str:
    return "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                   for c in code_cells(nb) for o in c.outputs)


@pytest.mark.timeout(BUDGET + 90)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_ray(path, ray_cluster, kernel_name, monkeypatch):  # noqa: F811
    nb = nbformat.read(path, as_version=4)
    monkeypatch.setenv("RAYLITE_BACKEND", "ray")  # the kernel inherits these
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster["address"])
    client = nbclient.NotebookClient(nb, kernel_name=kernel_name, timeout=BUDGET,
                                     startup_timeout=60,
                                     resources={"metadata": {"path": str(path.parent)}})
    start = time.monotonic()
    client.execute()  # raises CellExecutionError naming the cell that failed
    took = time.monotonic() - start
    errors = [o for c in code_cells(nb) for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    text = outputs_text(nb)
    for line in EXPECT[path.stem]:
        assert line in text, f"{path.name} on Ray did not show {line!r}"
    if "raylite.widgets import" in "".join(c.source for c in code_cells(nb)):
        shown = [o for c in code_cells(nb) for o in c.outputs
                 if WIDGET_MIME in o.get("data", {})]
        assert shown, f"{path.name} imports raylite.widgets but displayed no widget on Ray"
    assert_no_leaks(timeout=10)  # raylite's own processes and segments: none were made
    assert took < BUDGET, f"{path.name} took {took:.0f} s on Ray (budget {BUDGET} s)"
