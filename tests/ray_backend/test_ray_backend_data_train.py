"""raylite.data's and raylite.train's tests, unchanged, on a real Ray cluster through
the seam (``conftest.py``), and a TorchTrainer whose workers Ray places by a label
selector (``ray start --labels``) in a Ray placement group.

Left out, each for its reason (the rest of those modules runs here):
- Train's fault tests (a worker killed with SIGKILL, a KeyboardInterrupt during
  ``fit()``, the barrier timeouts): they find and signal raylite's worker processes;
- ``test_torch_ddp_group_reports_and_retention``: it checks ``MASTER_ADDR ==
  "127.0.0.1"``, raylite's node address; Ray's node here is on the host's address
  (:func:`test_torch_trainer_on_ray_with_a_label_selector` checks a DDP run on Ray);
- ``test_dataset_shards_are_disjoint_and_equal`` (it passes: 19-23 s here), for the Ray
  tests' budget (``test_streaming_split_equal_across_epochs`` splits on Ray too);
- ``test_equal_split_prefers_local_blocks``, ``test_local_mode_runs_in_the_driver``,
  ``test_scaling_config_validation``: they start no cluster (they run in the main suite).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pyarrow")

from test_data import (  # noqa: E402,F401  (collected here, with this directory's fixtures)
    test_batches_are_zero_copy_views_of_the_store,
    test_execution_options,
    test_from_items_and_rows,
    test_iter_batches_rebatch_drop_last_and_shuffle,
    test_iter_torch_batches,
    test_map_batches_class_runs_in_an_actor_pool,
    test_materialize_split_shuffle,
    test_range_and_function_transforms,
    test_read_parquet_and_csv_local_and_fsspec,
    test_streaming_split_equal_across_epochs,
)
from test_train import (  # noqa: E402,F401
    test_loop_error_carries_the_traceback,
    test_metrics_only_reports_never_wait,
)

from raylite import train  # noqa: E402
from raylite.train import RunConfig, ScalingConfig  # noqa: E402
from raylite.train.torch import TorchTrainer, prepare_model  # noqa: E402

pytestmark = pytest.mark.timeout(240)


def test_torch_trainer_on_ray_with_a_label_selector(shared_cluster, tmp_path, monkeypatch):
    import ray

    from .conftest import RAY_LABELS

    # defined here, so it is pickled by value (Ray's workers cannot import this module)
    def _placed_loop(config):
        import torch.distributed as dist

        import raylite
        from raylite.core import runtime
        from raylite.util import get_current_placement_group

        ctx = train.get_context()
        model = prepare_model(torch.nn.Linear(2, 1))
        loss = model(torch.ones(4, 2)).sum()
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        gathered = [torch.zeros_like(grads) for _ in range(ctx.get_world_size())]
        dist.all_gather(gathered, grads)
        pg = get_current_placement_group()
        train.report({"rank": ctx.get_world_rank(), "world": ctx.get_world_size(),
                      "same_grads": all(torch.equal(gathered[0], g) for g in gathered),
                      "node": raylite.get_runtime_context().get_node_id(),
                      "pg": pg.id.hex() if pg is not None else None,
                      "backend": runtime.backend.NAME})

    result = TorchTrainer(
        _placed_loop,
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5},
                                     label_selector={"pool": RAY_LABELS["pool"]}),
        run_config=RunConfig(name="on-ray", storage_path=str(tmp_path))).fit()
    m = result.metrics
    assert m["world"] == 2 and m["same_grads"] and m["backend"] == "ray"
    assert m["node"] == ray.nodes()[0]["NodeID"]
    # the workers ran in a Ray placement group, which fit() removed afterwards
    table = ray.util.placement_group_table()
    assert table[m["pg"]]["state"] == "REMOVED"
    monkeypatch.setenv("RAYLITE_TRAIN_PLACEMENT_TIMEOUT_S", "8")
    with pytest.raises(train.TrainingFailedError, match="nowhere"):  # no node has the label
        TorchTrainer(_placed_loop, scaling_config=ScalingConfig(
            num_workers=1, resources_per_worker={"CPU": 0.5},
            label_selector={"pool": "nowhere"}),
            run_config=RunConfig(name="nowhere", storage_path=str(tmp_path))).fit()
