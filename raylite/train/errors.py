"""Train's errors (Ray: ``ray.train.TrainingFailedError``)."""

from __future__ import annotations

from raylite.exceptions import RayliteError

__all__ = ["TrainingFailedError", "WorkerGroupError", "PlacementError"]


class TrainingFailedError(RayliteError):
    """``fit()`` failed. ``worker_failures`` maps ranks to their errors (each carrying
    the remote traceback); the first one is also the ``__cause__``."""

    def __init__(self, message: str, worker_failures: dict | None = None):
        super().__init__(message)
        self.worker_failures = dict(worker_failures or {})


class WorkerGroupError(TrainingFailedError):
    """One or more training workers failed (an error in the loop or a dead worker)."""


class PlacementError(TrainingFailedError):
    """The workers could not be placed: what was asked and what each node has."""
