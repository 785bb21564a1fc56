"""The lease policy: which leased worker takes the next task, when to pipeline, steal,
ask for more workers, or hand a worker back. Pure functions over :class:`Lease` records
(no I/O, no lock), used by the task submitter and tested directly.

- A task goes to an idle worker first; a busy one may take it behind its running task
  (*pipelining*, up to ``PIPELINE_DEPTH`` in flight) only while tasks of that shape are
  known to be short (a moving average under ``PIPELINE_MAX_TASK_S``) and its current
  task was sent less than ``PIPELINE_MAX_AGE_S`` ago, so a long task never holds up the
  ones behind it for long. SPREAD tasks and ``max_calls`` functions are not pipelined.
- Tasks queued behind one that runs longer than ``STEAL_AFTER_S`` are taken back
  (*stealing*) to run elsewhere.
- While tasks wait, up to ``MAX_LEASE_REQUESTS`` lease requests per shape are in flight;
  a worker idle for ``LEASE_IDLE_S`` goes back to the head.
"""

from __future__ import annotations

import os
import time

PIPELINE_DEPTH = int(os.environ.get("RAYLITE_PIPELINE_DEPTH", "4"))
PIPELINE_MAX_TASK_S = 0.002  # pipeline only tasks that take less than this on average
PIPELINE_MAX_AGE_S = 0.005   # ... and only behind a task sent less than this ago
STEAL_AFTER_S = 0.01         # take back tasks queued behind one running longer than this
LEASE_IDLE_S = float(os.environ.get("RAYLITE_LEASE_IDLE_S", "0.1"))
MAX_LEASE_REQUESTS = 8
UNKNOWN_TASK_S = 1.0         # the run time assumed for a shape not seen yet


class Lease:
    """A worker the head granted to this owner for one scheduling key."""

    __slots__ = ("worker_id", "addr", "core_addr", "node_id", "key", "inflight", "idle_since",
                 "blocked", "gpu_ids", "fns", "stealing", "exiting")

    def __init__(self, body: dict, key):
        self.worker_id = body["worker_id"]
        self.addr = body["addr"]
        self.core_addr = body["core_addr"]
        self.node_id = body["node_id"]
        self.gpu_ids = body.get("gpu_ids", ())
        self.key = key
        self.inflight: dict = {}  # task id -> Task, in the order sent
        self.idle_since = time.monotonic()
        self.blocked = False
        self.stealing = False
        self.exiting = False  # it ran its max_calls: used no more, never handed back
        self.fns: set = set()  # functions already sent to it


def may_pipeline(avg_task_s: float, spread: bool, max_calls) -> bool:
    """Whether tasks of a shape may queue behind a busy worker's running task."""
    return avg_task_s < PIPELINE_MAX_TASK_S and not spread and not max_calls


def pick_lease(leases, pipeline: bool, now: float):
    """The lease to send the next task to (the least busy usable one), or None."""
    best = None
    for lease in leases:
        n = len(lease.inflight)
        if lease.blocked or lease.stealing or lease.exiting or n >= PIPELINE_DEPTH:
            continue
        if n and not (pipeline and
                      now - next(iter(lease.inflight.values())).sent < PIPELINE_MAX_AGE_S):
            continue
        if best is None or n < len(best.inflight):
            best = lease
            if n == 0:
                break
    return best


def backlog(queued: int, leases) -> int:
    """Tasks waiting for a worker: queued, or pipelined behind another task."""
    n = queued
    for lease in leases:
        k = len(lease.inflight)
        if k > 1:
            n += k - 1
    return n


def lease_requests_wanted(waiting: int) -> int:
    """How many lease requests to keep in flight for ``waiting`` tasks."""
    return min(waiting, MAX_LEASE_REQUESTS)


def idle_action(lease: Lease, now: float) -> str | None:
    """What the periodic tick does with a lease: ``"return"`` it (idle too long),
    ``"steal"`` the tasks queued behind its long-running one, or nothing."""
    if lease.exiting:  # WORKER_DIED removes it once the worker is gone
        return None
    if not lease.inflight:
        return "return" if now - lease.idle_since > LEASE_IDLE_S else None
    if len(lease.inflight) > 1 and \
            now - next(iter(lease.inflight.values())).sent > STEAL_AFTER_S:
        return "steal"
    return None


def moving_average(avg: float | None, took: float) -> float:
    """The run time of a shape's tasks, as a moving average."""
    return took if avg is None else 0.8 * avg + 0.2 * took
