"""Train's configuration objects, with Ray Train v2's names and defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ScalingConfig", "RunConfig", "FailureConfig", "CheckpointConfig"]

DEFAULT_STORAGE_PATH = os.path.join("~", "raylite_results")


@dataclass
class ScalingConfig:
    """How many workers, and what each one gets (Ray: ``ray.train.ScalingConfig``).

    ``label_selector`` is one dict for every worker or a list of ``num_workers`` dicts
    (one per worker); it becomes the placement group's ``bundle_label_selector``, so each
    worker runs on a node whose labels match (``"v"``, ``"!v"``, ``"in(a,b)"``,
    ``"!in(a,b)"``). ``num_workers=0`` runs the loop in the driver (Ray's local mode).
    Each worker takes 1 CPU by default (Ray: 1 CPU, or 1 GPU with ``use_gpu``).
    """

    num_workers: int = 1
    use_gpu: bool = False
    resources_per_worker: dict | None = None
    placement_strategy: str = "PACK"
    accelerator_type: str | None = None
    label_selector: dict | list | None = None

    def __post_init__(self):
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {self.num_workers!r}")
        if self.placement_strategy not in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
            raise ValueError(f"Invalid placement_strategy {self.placement_strategy!r}")
        sel = self.label_selector
        if sel is None or isinstance(sel, dict):
            return
        if isinstance(sel, (list, tuple)):
            if len(sel) != self.num_workers:
                raise ValueError(f"label_selector is a list of {len(sel)} selectors for "
                                 f"num_workers={self.num_workers}; give one dict for all "
                                 "workers or exactly one per worker")
            if not all(isinstance(s, dict) for s in sel):
                raise ValueError("label_selector list entries must be dicts")
            return
        raise ValueError(f"label_selector must be a dict or a list of dicts, got {sel!r}")

    @property
    def _resources_per_worker(self) -> dict:
        res = dict(self.resources_per_worker or {})
        res.setdefault("CPU", 1)
        if self.use_gpu and "GPU" not in res:
            res["GPU"] = 1
        if self.accelerator_type:
            res[f"accelerator_type:{self.accelerator_type}"] = 0.001
        return {k: v for k, v in res.items() if v}

    @property
    def _bundle_label_selector(self) -> list[dict] | None:
        sel = self.label_selector
        if sel is None:
            return None
        if isinstance(sel, dict):
            return [dict(sel) for _ in range(self.num_workers)]
        return [dict(s) for s in sel]

    @property
    def total_resources(self) -> dict:
        out = {}
        for k, v in self._resources_per_worker.items():
            out[k] = v * self.num_workers
        return out


@dataclass
class FailureConfig:
    """``max_failures``: how many times the whole worker group restarts from the latest
    checkpoint after a worker fails (-1: without limit). As in Ray, an error in the
    training function counts as a failure too."""

    max_failures: int = 0

    def __post_init__(self):
        if not isinstance(self.max_failures, int) or self.max_failures < -1:
            raise ValueError(f"max_failures must be an int >= -1, got {self.max_failures!r}")


@dataclass
class CheckpointConfig:
    """Which checkpoints to keep. ``num_to_keep`` (None: all) keeps the best by
    ``checkpoint_score_attribute`` (a metric name, or a ``/`` path into nested metrics:
    a raylite extension) in ``checkpoint_score_order``, or the most recent without one.
    The latest checkpoint and any still being validated are never deleted."""

    num_to_keep: int | None = None
    checkpoint_score_attribute: str | None = None
    checkpoint_score_order: str = "max"

    def __post_init__(self):
        if self.num_to_keep is not None and (not isinstance(self.num_to_keep, int)
                                             or self.num_to_keep < 1):
            raise ValueError(f"num_to_keep must be None or an int >= 1, got "
                             f"{self.num_to_keep!r}")
        if self.checkpoint_score_order not in ("max", "min"):
            raise ValueError(f"checkpoint_score_order must be 'max' or 'min', got "
                             f"{self.checkpoint_score_order!r}")


@dataclass
class RunConfig:
    """Where a run keeps its results and how it handles failures (Ray:
    ``ray.train.RunConfig``). ``storage_path`` is a local directory or an fsspec URI
    (``s3://bucket/runs``, ``file:///...``); the run's directory is
    ``storage_path/name``. ``callbacks`` get ``after_report(run_context, metrics,
    checkpoint)`` in the driver, as reports arrive."""

    name: str | None = None
    storage_path: str | None = None
    failure_config: FailureConfig | None = None
    checkpoint_config: CheckpointConfig | None = None
    callbacks: list[Any] = field(default_factory=list)
    storage_filesystem: Any = None
    worker_runtime_env: dict | None = None

    def __post_init__(self):
        if self.failure_config is None:
            self.failure_config = FailureConfig()
        if self.checkpoint_config is None:
            self.checkpoint_config = CheckpointConfig()
        if self.callbacks is None:
            self.callbacks = []
