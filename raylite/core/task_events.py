"""The task-event buffer: records of the tasks this process submitted (the state API's
``list_tasks`` and the timeline), sent to the head in batches.

A record is a :func:`raylite.core.protocol.task_record` (fields named ``P.TR_*``). It is
made on submit, filled in as the task is sent, retried and done, and sent with the next
batch (every ``TASK_EVENTS_S`` from the IO thread, or at once by
:meth:`flush_task_events`); a field not known yet is None and keeps what the head has.
``RAYLITE_TASK_EVENTS=0`` turns the records off (callers test ``_task_log_on`` first, so
that costs nothing on the hot path). Part of the CoreWorker (``self`` is it); lock held
in every method but ``flush_task_events``.
"""

from __future__ import annotations

import os
import time

from raylite.core import protocol as P

TASK_EVENTS_S = 0.1          # how often task records go to the head (state API, timeline)


class TaskEventsPart:
    """Task records for the state API (``self`` is the CoreWorker)."""

    def _init_task_events(self) -> None:
        self._task_log: dict[bytes, list] = {}  # task id -> P.task_record, not sent yet
        self._task_log_on = os.environ.get("RAYLITE_TASK_EVENTS", "1") != "0"
        self._last_task_flush = 0.0

    def flush_task_events(self) -> None:
        """Send the task records gathered since the last batch to the head now."""
        with self._lock:
            records, self._task_log = list(self._task_log.values()), {}
        if records:
            self.send_head(P.TASK_EVENTS, {"records": records})

    def _maybe_flush_task_events(self, now: float) -> None:
        if self._task_log and now - self._last_task_flush > TASK_EVENTS_S:
            self._last_task_flush = now
            self.flush_task_events()

    def _task_record(self, tid: bytes) -> list:
        rec = self._task_log.get(tid)
        if rec is None:  # its earlier part went to the head already
            rec = self._task_log[tid] = P.task_record(tid)
        return rec

    def _log_submitted(self, t) -> None:
        self._task_log[t.task_id] = P.task_record(t.task_id, t.name, self.job_id, t.actor_id,
                                                  time.time())

    def _log_sent(self, t, node_id: str | None, worker_id: str | None) -> None:
        rec = self._task_record(t.task_id)
        rec[P.TR_SENT], rec[P.TR_NODE_ID], rec[P.TR_WORKER_ID] = \
            time.time(), node_id, worker_id

    def _log_retry(self, t) -> None:
        t.attempts += 1
        if self._task_log_on:
            self._task_record(t.task_id)[P.TR_ATTEMPTS] = t.attempts

    def _log_done(self, tid: bytes, body: dict) -> None:
        rec = self._task_record(tid)
        rec[P.TR_START], rec[P.TR_END] = body.get("t0"), body.get("t1") or time.time()
        if body.get("error") is not None:
            rec[P.TR_ERROR] = body.get("error_msg") or "error"

    def _log_failed(self, t, error: BaseException) -> None:
        rec = self._task_record(t.task_id)
        rec[P.TR_END] = time.time()
        rec[P.TR_ERROR] = f"{type(error).__name__}: {error}"[:300]
