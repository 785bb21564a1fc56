"""``Result``: what ``fit()`` returns, and what ``Result.from_path`` reads back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from raylite.train._internal import metrics as M
from raylite.train._internal.storage import StorageContext, filesystem_for
from raylite.train.checkpoint import Checkpoint

__all__ = ["Result"]

STATE_FILE = "raylite_train_state.json"


@dataclass
class Result:
    """A finished run (Ray: ``ray.train.Result``): the last reported ``metrics`` (rank
    0's), the latest ``checkpoint``, the kept ``best_checkpoints`` as ``(checkpoint,
    metrics)`` pairs, every report of rank 0 in ``metrics_dataframe``, the ``error`` if
    it failed, and the run's ``path``."""

    metrics: dict | None
    checkpoint: Checkpoint | None
    error: BaseException | None = None
    path: str | None = None
    best_checkpoints: list = field(default_factory=list)
    metrics_history: list = field(default_factory=list, repr=False)
    _storage_filesystem: Any = field(default=None, repr=False)

    @property
    def metrics_dataframe(self):
        """Rank 0's reports, one row each (nested metrics flattened with ``/``)."""
        import pandas as pd

        return pd.DataFrame([_flatten(m) for m in self.metrics_history])

    @property
    def filesystem(self):
        return self._storage_filesystem

    def get_best_checkpoint(self, metric: str, mode: str) -> Checkpoint | None:
        """The kept checkpoint with the best ``metric`` (``mode`` "max" or "min").

        ``metric`` is an exact top-level key if there is one, else a ``/`` path into
        nested metrics (``"val/loss"``, ``"layers/0/norm"``). ValueError for another
        mode; RuntimeError when no checkpoint carries the metric. Raises where Ray
        returns None, as Ray 2.53 does for a missing metric."""
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        records = [{"metrics": m, "checkpoint": c} for c, m in self.best_checkpoints]
        if not records:
            return None
        pick = M.best(records, metric, mode)
        if pick is None:
            raise RuntimeError(f"No checkpoint of this run has the metric {metric!r}; "
                               f"their metrics have: {sorted(_flatten(records[-1]['metrics']))}")
        return pick["checkpoint"]

    @classmethod
    def from_path(cls, path: str, storage_filesystem=None) -> Result:
        """Read a run's result from its directory (local or fsspec URI)."""
        fs, fs_path = filesystem_for(str(path), storage_filesystem)
        parent, name = fs_path.rstrip("/").rsplit("/", 1)
        storage = StorageContext(parent, name, fs)
        try:
            state = storage.read_json(STATE_FILE)
        except FileNotFoundError:
            raise RuntimeError(f"{path!r} holds no raylite train run ({STATE_FILE} is "
                               "missing)") from None
        return from_state(state, storage, str(path))


def from_state(state: dict, storage: StorageContext, path: str | None = None,
               error: BaseException | None = None) -> Result:
    fs = storage.filesystem

    def ckpt(rec):
        return Checkpoint(rec["path"], fs) if fs is not None else Checkpoint(rec["path"])

    kept = [r for r in state.get("checkpoints", []) if not r.get("deleted")]
    latest = ckpt(kept[-1]) if kept else None
    history = state.get("metrics", [])
    err = error
    if err is None and state.get("error"):
        from raylite.train.errors import TrainingFailedError

        err = TrainingFailedError(state["error"])
    return Result(metrics=history[-1] if history else None, checkpoint=latest, error=err,
                  path=path or storage.experiment_path,
                  best_checkpoints=[(ckpt(r), r["metrics"]) for r in kept],
                  metrics_history=history, _storage_filesystem=fs)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out
