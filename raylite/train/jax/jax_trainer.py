"""``JaxTrainer``: data-parallel JAX on raylite actors."""

from __future__ import annotations

from collections.abc import Callable

from raylite.train.jax.config import JaxConfig
from raylite.train.trainer import DataParallelTrainer

__all__ = ["JaxTrainer"]


class JaxTrainer(DataParallelTrainer):
    """Runs ``train_loop_per_worker`` on every worker of one ``jax.distributed`` job
    (Ray: ``ray.train.v2.jax.JaxTrainer``; the arguments are Ray's). Differs from Ray:
    no TPU support (Ray's JaxTrainer targets TPUs and GPUs)."""

    def __init__(self, train_loop_per_worker: Callable, *, train_loop_config: dict | None = None,
                 jax_config: JaxConfig | None = None, scaling_config=None, run_config=None,
                 datasets: dict | None = None, dataset_config=None):
        super().__init__(train_loop_per_worker, train_loop_config=train_loop_config,
                         backend_config=jax_config or JaxConfig(),
                         scaling_config=scaling_config, run_config=run_config,
                         datasets=datasets, dataset_config=dataset_config)
        self.jax_config = self.backend_config
