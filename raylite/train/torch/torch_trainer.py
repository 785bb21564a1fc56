"""``TorchTrainer``: data-parallel torch training on raylite actors."""

from __future__ import annotations

from collections.abc import Callable

from raylite.train.torch.config import TorchConfig
from raylite.train.trainer import DataParallelTrainer

__all__ = ["TorchTrainer"]


class TorchTrainer(DataParallelTrainer):
    """Runs ``train_loop_per_worker`` on every worker inside one torch.distributed
    process group (Ray: ``ray.train.torch.TorchTrainer``; the arguments are Ray's).
    ``num_workers=0`` runs the loop in the driver without a process group."""

    def __init__(self, train_loop_per_worker: Callable, *, train_loop_config: dict | None = None,
                 torch_config: TorchConfig | None = None, scaling_config=None, run_config=None,
                 datasets: dict | None = None, dataset_config=None):
        super().__init__(train_loop_per_worker, train_loop_config=train_loop_config,
                         backend_config=torch_config or TorchConfig(),
                         scaling_config=scaling_config, run_config=run_config,
                         datasets=datasets, dataset_config=dataset_config)
        self.torch_config = self.backend_config
