"""The run's coordinator: an async actor (``num_cpus=0``) every worker reports to.

Workers push their reports here as they make them (Ray's controller polls its workers
every 2 s instead). It keeps:

- the reports of every rank (rank 0's are the run's metrics);
- **checkpoint barriers**: a report with a checkpoint waits until every rank has made
  that many reports (its ``seq``), metrics-only or not. A metrics-only report is a
  one-way message: it never waits, yet it counts for the barrier of a rank that did
  attach a checkpoint. A barrier fails, naming the ranks, when they finished their
  loop without reaching it or did not reach it within the barrier timeout (where Ray
  would hang);
- the **registered checkpoints**: a checkpoint is registered (with rank 0's metrics of
  that report) once every rank reached the barrier and every rank that attached files
  has uploaded them; then retention runs (``CheckpointConfig``; never the latest, never
  one awaiting validation) and the run's state file is rewritten;
- **validation**: ``validate_fn`` runs as a task (``num_cpus=0``), one at a time; its
  dict is merged into the checkpoint's metrics (``{}`` when it fails);
- an **event log** the driver long-polls (reports reach ``fit()``'s callbacks at once)
  and a snapshot the TrainView reads.

The coordinator outlives worker-group restarts (``start_attempt``): checkpoints stay
registered and the next group resumes from the latest one. A message from a previous
attempt's worker is ignored.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from raylite.train._internal import metrics as M

log = logging.getLogger(__name__)

STATE_FILE = "raylite_train_state.json"
RANK_HISTORY = 5000


class BarrierError(RuntimeError):
    """Some ranks did not reach a checkpoint report that others made."""


def _run_validation(fn, checkpoint, config):
    out = fn(checkpoint, config) if config is not None else fn(checkpoint, None)
    if not isinstance(out, dict):
        raise TypeError(f"validate_fn must return a dict, got {type(out).__name__}")
    return out


class _Pending:
    def __init__(self, seq: int):
        self.seq = seq
        self.parts: dict[int, dict] = {}
        self.uploaded: set[int] = set()


class TrainCoordinator:
    def __init__(self, name: str, storage, checkpoint_config, barrier_timeout_s: float,
                 local: bool = False):
        self.name = name
        self.storage = storage
        self.ckpt_config = checkpoint_config
        self.barrier_timeout_s = barrier_timeout_s
        self.local = local
        self.started = time.time()
        self.state = "STARTING"
        self.attempt = 0
        self.world_size = 0
        self.workers: list[dict] = []
        self.restarts: list[dict] = []
        self.reached: dict[int, int] = {}
        self.finished: dict[int, int] = {}
        self.pending: dict[int, _Pending] = {}
        self.rank0_at: dict[int, dict] = {}
        self.metrics: list[dict] = []
        self.rank_metrics: dict[int, collections.deque] = {}
        self.checkpoints: list[dict] = []
        self.max_seq = -1
        self.seq_base = 0
        self.fatal: str | None = None
        self.error: str | None = None
        self.events: collections.deque = collections.deque(maxlen=5000)
        self.event_id = 0
        self._gen: asyncio.Future | None = None
        self._validations: asyncio.Queue | None = None
        self._validator: asyncio.Task | None = None

    # ------------------------------------------------------------------ plumbing
    def _future(self) -> asyncio.Future:
        if self._gen is None or self._gen.done():
            self._gen = asyncio.get_running_loop().create_future()
        return self._gen

    def _notify(self) -> None:
        if self._gen is not None and not self._gen.done():
            self._gen.set_result(None)

    async def _wait_for(self, pred, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not pred():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            try:
                await asyncio.wait_for(asyncio.shield(self._future()), left)
            except asyncio.TimeoutError:
                pass
        return True

    def _event(self, kind: str, **body) -> None:
        self.event_id += 1
        self.events.append((self.event_id, kind, body))
        self._notify()

    # ------------------------------------------------------------ driver's calls
    async def start_attempt(self, world_size: int, workers: list[dict]) -> tuple[int, int]:
        """A new worker group starts; returns (attempt, the first report seq to use)."""
        self.attempt += 1
        self.world_size = world_size
        self.workers = workers
        self.reached, self.finished, self.pending = {}, {}, {}
        self.seq_base = self.max_seq + 1
        self.state = "RUNNING"
        self._event("attempt", attempt=self.attempt, workers=workers)
        return self.attempt, self.seq_base

    async def note_restart(self, reason: str) -> None:
        self.restarts.append({"time": time.time(), "attempt": self.attempt, "reason": reason})
        self.state = "RESTARTING"
        self._event("restart", attempt=self.attempt, reason=reason)

    async def latest_checkpoint(self) -> dict | None:
        kept = [c for c in self.checkpoints if not c["deleted"]]
        return kept[-1] if kept else None

    async def poll(self, cursor: int, timeout: float = 1.0) -> tuple[list, int, str | None]:
        """Events after ``cursor`` (waits up to ``timeout`` for one), the new cursor and
        the fatal error if a barrier failed."""
        await self._wait_for(lambda: self.event_id > cursor or self.fatal, timeout)
        out = [e for e in self.events if e[0] > cursor]
        return out, self.event_id, self.fatal

    async def finish(self, error: str | None) -> dict:
        """The run ended: wait for validations, write the state file, return it."""
        await self._wait_for(lambda: not any(c["pending"] for c in self.checkpoints), 60)
        self.error = error
        self.state = "ERRORED" if error else "FINISHED"
        self._event("finished", error=error)
        self._persist()
        return self._state()

    async def close(self) -> None:
        """Stop the validation loop (local mode, before its event loop stops)."""
        if self._validator is not None:
            self._validator.cancel()

    async def snapshot(self, since: dict | None = None) -> dict:
        """All a TrainView shows: workers, per-rank metrics, checkpoints, restarts."""
        return {"name": self.name, "state": self.state, "attempt": self.attempt,
                "started": self.started, "world_size": self.world_size,
                "workers": self.workers, "restarts": self.restarts,
                "checkpoints": self.checkpoints, "path": self.storage.experiment_path,
                "error": self.error or self.fatal,
                "rank_metrics": {r: list(d) for r, d in self.rank_metrics.items()},
                "score_attribute": self.ckpt_config.checkpoint_score_attribute}

    # ------------------------------------------------------------ workers' calls
    def _arrive(self, rank: int, seq: int, metrics: dict, ts: float) -> None:
        self.reached[rank] = max(self.reached.get(rank, -1), seq)
        self.max_seq = max(self.max_seq, seq)
        hist = self.rank_metrics.setdefault(rank, collections.deque(maxlen=RANK_HISTORY))
        hist.append((ts, seq, self.attempt, metrics))
        if rank == 0:
            self.metrics.append(metrics)
            self.rank0_at[seq] = metrics
            if len(self.rank0_at) > 1000:
                for s in sorted(self.rank0_at)[:-500]:
                    if s not in self.pending:
                        del self.rank0_at[s]
        self._event("report", rank=rank, seq=seq, metrics=metrics, ts=ts)

    async def report(self, attempt: int, rank: int, seq: int, metrics: dict, ts: float):
        if attempt != self.attempt:
            return
        self._arrive(rank, seq, metrics, ts)
        for s in list(self.pending):
            self._try_register(s)

    async def checkpoint_report(self, attempt: int, rank: int, seq: int, metrics: dict,
                                ts: float, part: dict, uploaded: bool) -> None:
        """A report with a checkpoint: the barrier. Returns once every rank reached
        ``seq``; raises BarrierError naming the ranks that did not."""
        if attempt != self.attempt:
            raise BarrierError("this worker group was replaced (a restart)")
        p = self.pending.setdefault(seq, _Pending(seq))
        p.parts[rank] = part
        if uploaded:
            p.uploaded.add(rank)
        self._arrive(rank, seq, metrics, ts)
        for s in list(self.pending):
            self._try_register(s)
        ws = self.world_size

        def missing():
            return [r for r in range(ws) if self.reached.get(r, -1) < seq]

        def over():
            return (self.attempt != attempt or self.fatal is not None or not missing()
                    or any(r in self.finished for r in missing()))

        await self._wait_for(over, self.barrier_timeout_s)
        if self.attempt != attempt:
            raise BarrierError("this worker group was replaced (a restart)")
        if self.fatal is not None:
            raise BarrierError(self.fatal)
        gone = missing()
        if not gone:
            return
        done = [r for r in gone if r in self.finished]
        if done:
            msg = (f"Rank {rank} reported a checkpoint (report #{seq - self.seq_base + 1}) but "
                   f"ranks {done} finished their training loop without making that report; "
                   "every rank must call train.report the same number of times")
        else:
            msg = (f"Ranks {gone} did not reach report #{seq - self.seq_base + 1} (a checkpoint "
                   f"report, which ranks {sorted(set(range(ws)) - set(gone))} made) within "
                   f"{self.barrier_timeout_s:g} s: every rank must call train.report the "
                   "same number of times (set RAYLITE_TRAIN_REPORT_BARRIER_TIMEOUT_S to wait "
                   "longer)")
        self.fatal = msg
        self._event("fatal", message=msg)
        raise BarrierError(msg)

    async def upload_done(self, attempt: int, rank: int, seq: int) -> None:
        p = self.pending.get(seq)
        if attempt != self.attempt or p is None:
            return
        p.uploaded.add(rank)
        self._try_register(seq)

    async def worker_finished(self, attempt: int, rank: int, seq: int) -> None:
        if attempt == self.attempt:
            self.finished[rank] = seq
            self._notify()

    async def reported_checkpoints(self, attempt: int, upto_seq: int, mode: str) -> list:
        """Registered checkpoints once every checkpoint report (of any rank) up to
        ``upto_seq`` that reached the coordinator is registered (COMMITTED) and, for
        VALIDATED, no validation is pending. It never waits for other ranks to catch up:
        metrics-only reports leave nothing pending, so it cannot hang on them."""
        def ready():
            if self.attempt != attempt or self.fatal:
                return True
            if any(s <= upto_seq for s in self.pending):
                return False
            return mode != "VALIDATED" or not any(c["pending"] for c in self.checkpoints)
        await self._wait_for(ready, None)
        return [c for c in self.checkpoints if not c["deleted"]]

    # --------------------------------------------------------------- bookkeeping
    def _try_register(self, seq: int) -> None:
        p = self.pending.get(seq)
        if p is None or seq not in self.rank0_at:
            return
        if any(self.reached.get(r, -1) < seq for r in range(self.world_size)):
            return
        if set(p.parts) - p.uploaded:
            return
        del self.pending[seq]
        first = p.parts[min(p.parts)]
        validate = next((pt["validate_fn"] for pt in p.parts.values() if pt.get("validate_fn")),
                        None)
        rec = {"index": len(self.checkpoints), "seq": seq, "attempt": self.attempt,
               "dir_name": first["dir_name"], "path": first["path"],
               "metrics": dict(self.rank0_at[seq]), "time": time.time(),
               "pending": validate is not None, "deleted": False}
        self.checkpoints.append(rec)
        self._event("checkpoint", checkpoint=rec)
        if validate is not None:
            self._queue_validation(rec, validate, first.get("validate_config"))
        self._retain()
        self._persist()

    def _queue_validation(self, rec: dict, fn, config) -> None:
        if self._validations is None:
            self._validations = asyncio.Queue()
            self._validator = asyncio.get_running_loop().create_task(self._validate_loop())
        self._validations.put_nowait((rec, fn, config))

    async def _validate_loop(self) -> None:
        import raylite
        from raylite.train.checkpoint import Checkpoint

        task = None if self.local else raylite.remote(num_cpus=0, max_retries=0)(
            _run_validation)
        while True:
            rec, fn, config = await self._validations.get()
            ckpt = Checkpoint(rec["path"], self.storage.filesystem)
            try:
                if task is None:
                    loop = asyncio.get_running_loop()
                    out = await loop.run_in_executor(None, _run_validation, fn, ckpt, config)
                else:
                    out = await task.remote(fn, ckpt, config)
            except Exception as e:
                log.warning("validate_fn failed for %s: %s", rec["dir_name"], e)
                out = {}
            rec["metrics"].update(out)
            rec["pending"] = False
            self._event("validated", checkpoint=rec)
            self._retain()
            self._persist()

    def _retain(self) -> None:
        cc = self.ckpt_config
        live = [c for c in self.checkpoints if not c["deleted"]]
        for i in M.to_delete(live, cc.num_to_keep, cc.checkpoint_score_attribute,
                             cc.checkpoint_score_order):
            rec = live[i]
            try:
                self.storage.delete(rec["path"])
            except Exception as e:
                log.warning("could not delete checkpoint %s: %s", rec["path"], e)
            rec["deleted"] = True
            self._event("deleted", checkpoint=rec)

    def _state(self) -> dict:
        return {"name": self.name, "checkpoints": self.checkpoints, "metrics": self.metrics,
                "error": self.error, "restarts": self.restarts, "workers": self.workers}

    def _persist(self) -> None:
        try:
            self.storage.write_json(STATE_FILE, self._state())
        except Exception as e:
            log.warning("could not write the run's state file: %s", e)
