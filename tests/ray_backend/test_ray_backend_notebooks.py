"""The quickstart notebook, unchanged, run headless on the Ray cluster of this
directory (``RAYLITE_BACKEND=ray`` and ``RAY_ADDRESS`` in the kernel's environment): its
``raylite.init(num_cpus=2)`` joins that cluster, and its ClusterView and Timeline read
Ray's state.

Not run here (each takes minutes on Ray on this 2-core machine, past the Ray tests'
budget, or is about raylite's own runtime): ``01_zero_copy`` and
``02_placement_and_autoscaling`` (virtual nodes, the local autoscaler provider),
``03_serve``, ``04_train``, ``05_llm`` (their libraries' tests run on Ray in the files
beside this one)."""

from __future__ import annotations

import pytest
from test_notebooks import ROOT, kernel_name  # noqa: F401  (the kernelspec fixture)

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.timeout(300)


def test_quickstart_runs_on_ray(ray_cluster, kernel_name, monkeypatch):  # noqa: F811
    path = ROOT / "notebooks" / "00_quickstart.ipynb"
    nb = nbformat.read(path, as_version=4)
    monkeypatch.setenv("RAYLITE_BACKEND", "ray")  # the kernel inherits these
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster["address"])
    client = nbclient.NotebookClient(nb, kernel_name=kernel_name, timeout=150,
                                     startup_timeout=60,
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    cells = [c for c in nb.cells if c.cell_type == "code"]
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                   for c in cells for o in c.outputs)
    assert "backend='ray'" in text  # the context the first cell shows
    assert "(ZeroDivisionError); also a RayTaskError: True" in text
    assert "ray::divide()" in text  # Ray's remote traceback
    shown = [o for c in cells for o in c.outputs
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert shown, "the ClusterView and Timeline were not displayed as widgets"
