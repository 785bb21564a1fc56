"""What a training function calls: ``report``, ``get_context``, ``get_checkpoint``,
``get_dataset_shard``, ``get_all_reported_checkpoints`` (Ray Train v2's names)."""

from __future__ import annotations

from raylite.train._internal.session import (
    CheckpointConsistencyMode,
    CheckpointUploadMode,
    ReportedCheckpoint,
    require_session,
)

__all__ = ["TrainContext", "report", "get_context", "get_checkpoint", "get_dataset_shard",
           "get_all_reported_checkpoints"]


class TrainContext:
    """Facts about this training worker (Ray: ``ray.train.get_context()``)."""

    def __init__(self, session):
        self._s = session

    def get_world_size(self) -> int:
        return self._s.world_size

    def get_world_rank(self) -> int:
        return self._s.rank

    def get_local_rank(self) -> int:
        return self._s.local_rank

    def get_local_world_size(self) -> int:
        return self._s.local_world_size

    def get_node_rank(self) -> int:
        return self._s.node_rank

    def get_experiment_name(self) -> str:
        return self._s.experiment_name

    def get_trial_name(self) -> str:
        return self._s.experiment_name

    def get_storage(self):
        """The run's ``StorageContext`` (``experiment_path``, ``filesystem``)."""
        return self._s.storage

    def get_metadata(self) -> dict:
        return dict(self._s.metadata)

    def __repr__(self) -> str:
        return (f"TrainContext(rank={self._s.rank}, world_size={self._s.world_size}, "
                f"local_rank={self._s.local_rank}, node_rank={self._s.node_rank})")


def report(metrics: dict, checkpoint=None, checkpoint_dir_name: str | None = None,
           checkpoint_upload_mode=CheckpointUploadMode.SYNC,
           delete_local_checkpoint_after_upload: bool | None = None,
           validate_fn=None, validate_config: dict | None = None) -> None:
    """Report metrics, and optionally a checkpoint, from every rank.

    Differs from Ray, where every report is a barrier across ranks: in raylite a report
    **with a checkpoint** is a barrier (it returns once every rank has made as many
    reports, with or without a checkpoint), while a **metrics-only report moves no data
    and never waits**: not on other ranks, not on uploads. Rank 0's metrics are the run's
    metrics and are the metrics a checkpoint is registered with. When ranks disagree (one
    reports a checkpoint, another never reaches that report), the barrier fails after a
    timeout, or at once if those ranks finished, naming them (Ray hangs).

    ``checkpoint_upload_mode``: SYNC copies the files to the run's storage before the
    barrier; ASYNC copies them in a background thread after it (upload errors are raised
    at the next report; the local directory is deleted afterwards unless
    ``delete_local_checkpoint_after_upload=False``); NO_UPLOAD registers a checkpoint
    whose files are already in the storage. ``validate_fn(checkpoint, validate_config)``
    runs later as a task (one at a time); the dict it returns is merged into the
    checkpoint's metrics (``{}`` if it fails).
    """
    require_session("report").report(metrics, checkpoint, checkpoint_dir_name,
                                     checkpoint_upload_mode,
                                     delete_local_checkpoint_after_upload, validate_fn,
                                     validate_config)


def get_context() -> TrainContext:
    return TrainContext(require_session("get_context"))


def get_checkpoint():
    """The checkpoint this run (re)started from: the latest registered one after a
    restart, else None."""
    return require_session("get_checkpoint").checkpoint


def get_dataset_shard(dataset_name: str | None = None):
    """This worker's DataIterator for ``dataset_name`` (a split of it, or all of it for
    datasets the DataConfig does not split)."""
    s = require_session("get_dataset_shard")
    if dataset_name is None and len(s.datasets) == 1:
        return next(iter(s.datasets.values()))
    if dataset_name not in s.datasets:
        raise KeyError(f"No dataset named {dataset_name!r} was given to the trainer; it has "
                       f"{sorted(s.datasets)}")
    return s.datasets[dataset_name]


def get_all_reported_checkpoints(
        consistency_mode=CheckpointConsistencyMode.VALIDATED) -> list[ReportedCheckpoint]:
    """Every kept checkpoint of the run as ``ReportedCheckpoint(checkpoint, metrics)``.

    COMMITTED waits until every checkpoint this rank reported so far is persisted and
    registered; VALIDATED (the default) also waits until no validation is pending. Reports
    that carried only metrics are never waited for, so this never hangs on them (the
    seed's PR #58870)."""
    return require_session("get_all_reported_checkpoints").reported_checkpoints(
        consistency_mode)
