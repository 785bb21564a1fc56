"""The TrainView: its pure renderer on a hand-made run snapshot, and the live view
following a real 2-worker run (read from the run's coordinator actor)."""

from __future__ import annotations

import pytest

from raylite.widgets import render_train as RT

pytestmark = pytest.mark.timeout(120)

SNAP = {
    "name": "demo", "state": "RUNNING", "attempt": 2, "world_size": 2, "path": "/tmp/demo",
    "error": None, "score_attribute": "val/loss",
    "workers": [{"rank": 0, "node_id": "node0-abc", "labels": {"zone": "a"}, "pid": 11},
                {"rank": 1, "node_id": "node1-def", "labels": {"zone": "b"}, "pid": 12}],
    "restarts": [{"time": 2.0, "attempt": 1, "reason": "rank 1 died"}],
    "checkpoints": [
        {"dir_name": "checkpoint_000000", "metrics": {"val": {"loss": 3.0}},
         "pending": False, "deleted": True},
        {"dir_name": "checkpoint_000001", "metrics": {"val": {"loss": 2.0}},
         "pending": True, "deleted": False}],
    "rank_metrics": {
        0: [(1.0, 0, 1, {"loss": 3.0}), (2.0, 1, 1, {"loss": 2.5}), (3.0, 2, 2, {"loss": 2.0})],
        1: [(1.0, 0, 1, {"loss": 3.1}), (3.0, 2, 2, {"loss": 2.1})]},
}


def test_render_curves_checkpoints_and_restarts():
    html = RT.train_html(SNAP)
    assert html.count('class="raylite-rank"') == 2
    assert html.count('class="raylite-restart"') == 1  # attempt 2 starts at report 2
    assert 'data-state="deleted"' in html and 'data-state="validating"' in html
    assert "zone=b" in html and "restart" in html
    assert RT.pick_metric(SNAP, None) == "loss"
    assert RT.series(SNAP, "loss")[1] == [(0, 3.1), (2, 2.1)]
    assert "no val/acc metric" in RT.curves_svg(SNAP, "val/acc")
    assert RT.train_text(SNAP).startswith("demo: RUNNING, 2 workers")


def test_live_view_follows_a_run(shared_cluster, tmp_path):
    pytest.importorskip("ipywidgets")
    pytest.importorskip("torch")
    from raylite import train
    from raylite.testing import wait_for_condition
    from raylite.train.torch import TorchTrainer
    from raylite.widgets import TrainView

    view = TrainView()
    try:
        def loop():
            for i in range(3):
                train.report({"loss": 1.0 / (i + 1)})

        TorchTrainer(loop, scaling_config=train.ScalingConfig(num_workers=2),
                     run_config=train.RunConfig(name="viewed", storage_path=str(tmp_path))
                     ).fit()
        wait_for_condition(lambda: view.snapshot is not None
                           and view.snapshot["state"] == "FINISHED", 20)
        snap = view.snapshot
        assert snap["name"] == "viewed" and [w["rank"] for w in snap["workers"]] == [0, 1]
        assert len(snap["rank_metrics"][0]) == 3
        assert view.html().count('class="raylite-rank"') == 2
    finally:
        view.close()
