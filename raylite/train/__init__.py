"""raylite.train: distributed training on raylite actors, with Ray Train v2's API.

``from raylite import train`` reads like Ray Train::

    from raylite import train
    from raylite.train.torch import TorchTrainer

    def loop(config):
        ...
        train.report({"loss": loss}, checkpoint=train.Checkpoint.from_directory(d))

    result = TorchTrainer(loop, scaling_config=train.ScalingConfig(num_workers=2)).fit()

Workers are actors in one placement group; reports are pushed to a coordinator actor as
they happen; a report with a checkpoint is a barrier, a metrics-only report never waits.
See README.md ("Train") for the differences from Ray.
"""

from __future__ import annotations

from raylite.train._internal.session import (
    CheckpointConsistencyMode,
    CheckpointUploadMode,
    ReportedCheckpoint,
)
from raylite.train.checkpoint import Checkpoint
from raylite.train.config import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from raylite.train.context import (
    TrainContext,
    get_all_reported_checkpoints,
    get_checkpoint,
    get_context,
    get_dataset_shard,
    report,
)
from raylite.train.data_config import DataConfig
from raylite.train.errors import PlacementError, TrainingFailedError, WorkerGroupError
from raylite.train.result import Result
from raylite.train.trainer import DataParallelTrainer

__all__ = [
    "ScalingConfig", "RunConfig", "FailureConfig", "CheckpointConfig", "DataConfig",
    "Checkpoint", "Result", "TrainContext", "report", "get_context", "get_checkpoint",
    "get_dataset_shard", "get_all_reported_checkpoints", "CheckpointUploadMode",
    "CheckpointConsistencyMode", "ReportedCheckpoint", "TrainingFailedError",
    "WorkerGroupError", "PlacementError", "DataParallelTrainer",
]
