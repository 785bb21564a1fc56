"""JaxTrainer: two CPU workers join one jax.distributed job (worker 0 coordinates) and
compute across processes (the GPU case is in test_train_gpu.py)."""

from __future__ import annotations

import pytest

from raylite import train

jax = pytest.importorskip("jax")
from raylite.train.jax import JaxTrainer  # noqa: E402

pytestmark = pytest.mark.timeout(180)


def _loop():
    import jax
    import jax.numpy as jnp
    from jax.experimental import multihost_utils

    rank = train.get_context().get_world_rank()
    gathered = multihost_utils.process_allgather(jnp.array([rank + 1.0]))
    train.report({"process_index": jax.process_index(), "process_count": jax.process_count(),
                  "devices": jax.device_count(), "local": jax.local_device_count(),
                  "platform": jax.devices()[0].platform,
                  "gathered": [float(x) for x in gathered.reshape(-1)]})


def test_two_cpu_workers_form_one_jax_job(shared_cluster, tmp_path):
    result = JaxTrainer(_loop, scaling_config=train.ScalingConfig(num_workers=2),
                        run_config=train.RunConfig(name="jax", storage_path=str(tmp_path))
                        ).fit()
    m = result.metrics
    assert m["process_index"] == 0 and m["process_count"] == 2
    assert m["devices"] == 2 and m["local"] == 1 and m["platform"] == "cpu"
    assert m["gathered"] == [1.0, 2.0]
