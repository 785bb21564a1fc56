"""``DataParallelTrainer``: the trainer the framework trainers (Torch, JAX) build on."""

from __future__ import annotations

from collections.abc import Callable

from raylite.train.config import RunConfig, ScalingConfig
from raylite.train.data_config import DataConfig
from raylite.train.result import Result

__all__ = ["DataParallelTrainer"]


class DataParallelTrainer:
    """Runs ``train_loop_per_worker`` on ``scaling_config.num_workers`` workers (Ray:
    ``ray.train.v2.api.data_parallel_trainer.DataParallelTrainer``).

    ``fit()`` returns a :class:`Result` or raises ``TrainingFailedError`` carrying the
    worker's error and traceback (Ray Train v2 raises too). See
    ``raylite.train._internal.controller`` for what it does, and README.md ("Train")
    for where it differs from Ray.
    """

    _backend_name: str | None = None

    def __init__(self, train_loop_per_worker: Callable, *, train_loop_config: dict | None = None,
                 backend_config=None, scaling_config: ScalingConfig | None = None,
                 run_config: RunConfig | None = None, datasets: dict | None = None,
                 dataset_config: DataConfig | None = None):
        if not callable(train_loop_per_worker):
            raise TypeError("train_loop_per_worker must be a function")
        self.train_loop_per_worker = train_loop_per_worker
        self.train_loop_config = train_loop_config
        self.backend_config = backend_config
        self.scaling_config = scaling_config or ScalingConfig()
        self.run_config = run_config or RunConfig()
        self.datasets = dict(datasets or {})
        self.dataset_config = dataset_config
        if not isinstance(self.scaling_config, ScalingConfig):
            raise TypeError("scaling_config must be a raylite.train.ScalingConfig")
        if not isinstance(self.run_config, RunConfig):
            raise TypeError("run_config must be a raylite.train.RunConfig")

    def _backend_config(self):
        return self.backend_config

    def _dataset_config(self) -> DataConfig:
        return self.dataset_config or DataConfig()

    def fit(self) -> Result:
        from raylite.train._internal.controller import fit

        return fit(self)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_workers={self.scaling_config.num_workers}, "
                f"datasets={sorted(self.datasets)})")
