"""Train's placement: workers placed by label selectors on virtual nodes, and a
placement no node can satisfy failing fit() after a bounded wait with what was asked
and what each node has (Ray waits forever)."""

from __future__ import annotations

import pytest

import raylite
from raylite import train
from raylite.train import RunConfig, ScalingConfig

pytest.importorskip("torch")
from raylite.train.torch import TorchTrainer  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def _run(tmp_path, name="run", **kw) -> RunConfig:
    return RunConfig(name=name, storage_path=str(tmp_path), **kw)


def test_label_selector_places_each_worker(two_nodes, tmp_path):
    def loop():
        node = raylite.get_runtime_context().get_node_id()
        zone = [n["Labels"].get("zone") for n in raylite.nodes() if n["NodeID"] == node][0]
        train.report({"zone": zone, "rank": train.get_context().get_world_rank()})

    zones = []

    class Keep:
        def after_report(self, run_context, metrics, checkpoint):
            zones.append(metrics[0]["zone"])

    TorchTrainer(loop, scaling_config=ScalingConfig(
        num_workers=2, label_selector=[{"zone": "b"}, {"zone": "a"}]),
        run_config=_run(tmp_path, callbacks=[Keep()])).fit()
    assert zones == ["b"]  # rank 0 is the first bundle's worker, on zone b
    TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=1,
                                                    label_selector={"zone": "in(a)"}),
                 run_config=_run(tmp_path, "one", callbacks=[Keep()])).fit()
    assert zones == ["b", "a"]


def test_infeasible_placement_fails_with_what_was_asked(two_nodes, tmp_path, monkeypatch):
    from raylite.util import placement_group_table

    monkeypatch.setenv("RAYLITE_TRAIN_PLACEMENT_TIMEOUT_S", "1")
    with pytest.raises(train.PlacementError) as info:
        TorchTrainer(lambda: None, scaling_config=ScalingConfig(
            num_workers=2, label_selector={"zone": "mars"}),
            run_config=_run(tmp_path)).fit()
    msg = str(info.value)
    assert "label_selector {'zone': 'mars'}" in msg and "labels {'zone': 'a'}" in msg
    assert "labels {'zone': 'b'}" in msg
    assert all(p["state"] == "REMOVED" for p in placement_group_table().values())
