"""``JaxConfig``: the jax.distributed backend of a JaxTrainer."""

from __future__ import annotations

import os
from dataclasses import dataclass

import raylite

__all__ = ["JaxConfig"]


def init_jax(coordinator: str, num_processes: int, process_id: int, use_gpu: bool) -> dict:
    """Run on each worker: join the jax.distributed job (every worker at once)."""
    if not use_gpu:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    if not use_gpu:
        try:  # collectives between processes on the CPU go over gloo
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        except Exception:
            pass
    # with GPUs, raylite narrows CUDA_VISIBLE_DEVICES to the worker's own: its device 0
    local = list(range(len(os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")))) \
        if use_gpu else None
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id, local_device_ids=local)
    return {"process_index": jax.process_index(), "devices": jax.device_count()}


@dataclass
class JaxConfig:
    """How the workers form one JAX job (Ray: ``ray.train.v2.jax.JaxConfig``): worker 0
    is the coordinator (its node's address and a free port there); each worker calls
    ``jax.distributed.initialize(coordinator, num_processes, process_id,
    local_device_ids)``. ``use_gpu`` must match ``ScalingConfig.use_gpu``; on CPUs the
    processes' collectives use gloo."""

    use_gpu: bool = False

    backend_name = "jax.distributed"

    def on_start(self, workers: list, ranked: list[dict], scaling_config) -> None:
        use_gpu = self.use_gpu or scaling_config.use_gpu
        port = raylite.get(workers[0].free_port.remote())
        coordinator = f"{ranked[0]['address']}:{port}"
        raylite.get([w.execute.remote(init_jax, coordinator, len(workers), info["rank"],
                                      use_gpu)
                     for w, info in zip(workers, ranked, strict=True)], timeout=300)
