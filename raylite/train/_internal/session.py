"""The worker side of a run: what ``train.report`` and ``train.get_context`` talk to.

One ``TrainSession`` per training process (a worker actor, or the driver in local
mode). It numbers the reports (``seq``), sends metrics-only reports as one-way messages,
persists checkpoints (SYNC: before the barrier; ASYNC: in a background thread after it;
NO_UPLOAD: the files are already in the storage) and raises upload errors of ASYNC
reports into the loop at its next report (or when it ends).
"""

from __future__ import annotations

import enum
import os
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from raylite.data import iterator

_session: TrainSession | None = None
_lock = threading.Lock()


class CheckpointUploadMode(enum.Enum):
    """How a reported checkpoint reaches the storage (Ray's names)."""

    SYNC = "SYNC"
    ASYNC = "ASYNC"
    NO_UPLOAD = "NO_UPLOAD"


class CheckpointConsistencyMode(enum.Enum):
    """What ``get_all_reported_checkpoints`` waits for (Ray's names)."""

    COMMITTED = "COMMITTED"
    VALIDATED = "VALIDATED"


@dataclass
class ReportedCheckpoint:
    checkpoint: object
    metrics: dict


class CoordinatorClient:
    """Calls on the coordinator: an actor handle, or an in-process one (local mode)."""

    def __init__(self, handle=None, local=None, loop=None):
        self.handle, self.local, self.loop = handle, local, loop

    def send(self, method: str, *args):
        """One-way: returns at once."""
        if self.handle is not None:
            getattr(self.handle, method).remote(*args)
        else:
            import asyncio

            asyncio.run_coroutine_threadsafe(getattr(self.local, method)(*args), self.loop)

    def call(self, method: str, *args):
        if self.handle is not None:
            import raylite

            return raylite.get(getattr(self.handle, method).remote(*args))
        import asyncio

        return asyncio.run_coroutine_threadsafe(getattr(self.local, method)(*args),
                                                self.loop).result()


class TrainSession:
    def __init__(self, *, rank: int, world_size: int, local_rank: int, local_world_size: int,
                 node_rank: int, experiment_name: str, storage, checkpoint, datasets: dict,
                 coordinator: CoordinatorClient, attempt: int, seq_offset: int,
                 use_gpu: bool = False, metadata: dict | None = None):
        self.rank, self.world_size = rank, world_size
        self.local_rank, self.local_world_size, self.node_rank = (local_rank, local_world_size,
                                                                  node_rank)
        self.experiment_name = experiment_name
        self.storage = storage
        self.checkpoint = checkpoint
        self.datasets = datasets or {}
        self.coord = coordinator
        self.attempt = attempt
        self.seq = seq_offset
        self.use_gpu = use_gpu
        self.metadata = metadata or {}
        self._uploader: ThreadPoolExecutor | None = None
        self._uploads: list[Future] = []

    # -------------------------------------------------------------- report
    def report(self, metrics: dict, checkpoint=None, checkpoint_dir_name: str | None = None,
               checkpoint_upload_mode=CheckpointUploadMode.SYNC,
               delete_local_checkpoint_after_upload: bool | None = None,
               validate_fn=None, validate_config=None) -> None:
        self._raise_upload_errors()
        if not isinstance(metrics, dict):
            raise TypeError(f"train.report needs a dict of metrics, got {type(metrics).__name__}")
        mode = CheckpointUploadMode(checkpoint_upload_mode)
        seq = self.seq
        self.seq += 1
        ts = time.time()
        metrics = dict(metrics)
        if checkpoint is None:
            self.coord.send("report", self.attempt, self.rank, seq, metrics, ts)
            return
        dir_name = checkpoint_dir_name or f"checkpoint_{seq:06d}"
        part = {"dir_name": dir_name, "path": self.storage.path(dir_name),
                "validate_fn": validate_fn, "validate_config": validate_config}
        if mode is CheckpointUploadMode.SYNC:
            self.storage.persist(checkpoint.path, dir_name)
        elif mode is CheckpointUploadMode.NO_UPLOAD:
            part["path"] = checkpoint._fs_path if checkpoint.filesystem is not None else \
                checkpoint.path
        self.coord.call("checkpoint_report", self.attempt, self.rank, seq, metrics, ts, part,
                        mode is not CheckpointUploadMode.ASYNC)
        if mode is CheckpointUploadMode.ASYNC:
            delete = True if delete_local_checkpoint_after_upload is None else \
                delete_local_checkpoint_after_upload
            self._upload_later(checkpoint.path, dir_name, seq, delete)

    def _upload_later(self, local_dir: str, dir_name: str, seq: int, delete: bool) -> None:
        if self._uploader is None:
            self._uploader = ThreadPoolExecutor(1, thread_name_prefix="raylite-train-upload")

        def upload():
            self.storage.persist(local_dir, dir_name)
            if delete:
                shutil.rmtree(local_dir, ignore_errors=True)
            self.coord.send("upload_done", self.attempt, self.rank, seq)
        self._uploads.append(self._uploader.submit(upload))

    def _raise_upload_errors(self, wait: bool = False) -> None:
        keep = []
        for f in self._uploads:
            if not wait and not f.done():
                keep.append(f)
                continue
            err = f.exception()
            if err is not None:
                self._uploads = [g for g in self._uploads if g is not f and not g.done()]
                raise RuntimeError(f"An ASYNC checkpoint upload failed: {err!r}") from err
        self._uploads = keep

    def finish(self) -> None:
        """The loop returned: wait for uploads (raising their errors), tell the
        coordinator this rank is done."""
        try:
            self._raise_upload_errors(wait=True)
        finally:
            if self._uploader is not None:
                self._uploader.shutdown(wait=True)
            # a call, not a message: it returns after this rank's one-way reports (calls
            # from one caller run in order), so fit() never ends before they are counted
            self.coord.call("worker_finished", self.attempt, self.rank, self.seq - 1)

    def reported_checkpoints(self, mode) -> list[ReportedCheckpoint]:
        from raylite.train.checkpoint import Checkpoint

        mode = CheckpointConsistencyMode(mode)
        recs = self.coord.call("reported_checkpoints", self.attempt, self.seq - 1, mode.value)
        fs = self.storage.filesystem
        return [ReportedCheckpoint(Checkpoint(r["path"], fs), r["metrics"]) for r in recs]


def init_session(**kwargs) -> TrainSession:
    global _session
    with _lock:
        _session = TrainSession(**kwargs)
        _set_env(_session)
        iterator.auto_device_fn = session_device
        return _session


def session_device():
    """This worker's torch device: its GPU when the trainer uses GPUs, else the CPU
    (``train.torch.get_device()``, and what ``iter_torch_batches(device="auto")`` uses)."""
    import torch

    s = _session
    if s is not None and s.use_gpu and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _set_env(s: TrainSession) -> None:
    os.environ.update({"RANK": str(s.rank), "WORLD_SIZE": str(s.world_size),
                       "LOCAL_RANK": str(s.local_rank),
                       "LOCAL_WORLD_SIZE": str(s.local_world_size),
                       "NODE_RANK": str(s.node_rank)})


def get_session() -> TrainSession | None:
    return _session


def end_session() -> None:
    global _session
    with _lock:
        _session = None
        iterator.auto_device_fn = None


def require_session(what: str) -> TrainSession:
    s = _session
    if s is None:
        raise RuntimeError(f"train.{what}() can only be called inside a training function "
                           "run by a Trainer's fit()")
    return s
