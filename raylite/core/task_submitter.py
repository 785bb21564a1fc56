"""The task submitter: normal tasks from this owner to leased workers (Ray's normal-task
submitter).

Tasks are queued per *scheduling key* (resource shape, strategy, label selector,
environment). For each key the owner asks the head for worker leases while tasks wait,
sends tasks straight to its leased workers (EXECUTE; results come back as TASK_DONE),
reports the queue length behind its requests (the autoscaler's backlog), takes back
tasks queued behind a slow or blocked worker (STEAL / STOLEN), retries tasks whose
worker died, and hands idle workers back. Which lease takes which task is the pure
:mod:`raylite.core.lease_policy`. Part of the CoreWorker (``self`` is it); lock held
unless said otherwise.
"""

from __future__ import annotations

import collections
import sys
import time

from raylite import exceptions as exc
from raylite.core import lease_policy as policy
from raylite.core import protocol as P
from raylite.core.lease_policy import Lease
from raylite.core.object_ref import new_id
from raylite.core.task_spec import Task, build_task

BACKLOG_S = 0.2              # how often queue lengths behind lease requests are reported


class TaskSubmitterPart:
    """Leases, dispatch, pipelining, stealing, backlog (``self`` is the CoreWorker)."""

    def _init_task_submitter(self) -> None:
        self._queues: dict[tuple, collections.deque] = {}
        self._leases: dict[tuple, list[Lease]] = {}
        self._lease_reqs: dict[tuple, dict[bytes, float]] = {}
        self._lease_by_worker: dict[str, Lease] = {}
        self._task_time: dict[tuple, float] = {}  # scheduling key -> moving average run time
        self._spread_keys: set[tuple] = set()
        self._lease_opts: dict[tuple, tuple] = {}
        self._last_backlog = 0.0
        self._backlogs: dict[tuple, int] = {}  # key -> queue length last told to the head

    def submit_task(self, fn_id: bytes, fn_bytes: bytes, name: str, args, kwargs, *,
                    key: tuple, demand: dict, nret, max_retries: int, retry_exceptions,
                    lease_opts: dict):
        """Submit a task (any thread); returns its refs or its generator."""
        fields = {"fn_id": fn_id, "name": name, "job_id": self.job_id, "resources": demand}
        if lease_opts.get("placement_group"):
            fields["placement_group"] = lease_opts["placement_group"]
        if lease_opts.get("max_calls"):  # the worker exits after that many (not pipelined)
            fields["max_calls"] = lease_opts["max_calls"]
        t = build_task(self, name, args, kwargs, nret, max_retries, fields)
        t.key = key
        t.fn_id, t.fn_bytes = fn_id, fn_bytes
        t.retry_exc = retry_exceptions
        out = self._register_returns(t)
        with self._lock:
            if self._task_log_on:
                self._log_submitted(t)
            if key not in self._queues:
                self._queues[key] = collections.deque()
                self._leases[key] = []
                self._lease_reqs[key] = {}
                self._lease_opts[key] = (demand, lease_opts)
                if lease_opts.get("strategy") == "SPREAD":
                    self._spread_keys.add(key)
            self._tasks[t.task_id] = t
            self._await_deps(t, lambda: self._enqueue(t))
        return out

    def _enqueue(self, t: Task, front: bool = False) -> None:
        if t.cancelled:
            return
        q = self._queues[t.key]
        if front:
            q.appendleft(t)
        else:
            q.append(t)
        self._dispatch(t.key)

    def _dispatch(self, key) -> None:
        """Send what the key's leases can take now; keep enough lease requests in
        flight for the rest (and withdraw them when nothing waits)."""
        q = self._queues[key]
        leases = self._leases[key]
        if q:
            pipeline = policy.may_pipeline(
                self._task_time.get(key, policy.UNKNOWN_TASK_S), key in self._spread_keys,
                self._lease_opts[key][1].get("max_calls"))
            now = time.monotonic()
            while q:
                best = policy.pick_lease(leases, pipeline, now)
                if best is None:
                    break
                self._send_task(best, q.popleft(), now)
        backlog = policy.backlog(len(q), leases)
        reqs = self._lease_reqs[key]
        if backlog:
            want = policy.lease_requests_wanted(backlog)
            while len(reqs) < want:
                self._request_lease(key)
        elif reqs:
            for req_id in list(reqs):
                self.send_head(P.CANCEL_LEASE, {"req_id": req_id})
            reqs.clear()

    def _send_task(self, lease: Lease, t: Task, now: float) -> None:
        t.sent = now
        body = t.body
        if t.fn_id not in lease.fns:
            body = dict(body, fn=t.fn_bytes, sys_path=[p for p in sys.path if p])
            lease.fns.add(t.fn_id)
        if t.deps:
            body = dict(body, deps=self._dep_descs(t))
        if lease.gpu_ids:
            body = dict(body, gpu_ids=lease.gpu_ids)
        t.lease = lease
        lease.inflight[t.task_id] = t
        if self._task_log_on:
            self._log_sent(t, lease.node_id, lease.worker_id)
        self.outbox.send(lease.addr, P.encode(P.EXECUTE, body))

    def _normal_task_done(self, t: Task, body) -> None:
        tid = t.task_id
        lease = t.lease
        if lease is not None:
            lease.inflight.pop(tid, None)
            lease.exiting = lease.exiting or bool(body.get("exiting"))
            now = time.monotonic()
            self._task_time[t.key] = policy.moving_average(self._task_time.get(t.key),
                                                           now - t.sent)
            if not lease.inflight:
                lease.idle_since = now
                if t.key in self._spread_keys and not lease.exiting:  # SPREAD: anew
                    self._return_lease(lease)
        err = body.get("error")
        if err is not None and not t.cancelled and t.retries != 0 and \
                self._should_retry(t, body):
            t.retries -= 1
            self._log_retry(t)  # the state API shows one task with its attempts
            t.lease = None
            self._enqueue(t, front=True)
            return
        if self._task_log_on:
            self._log_done(tid, body)
        del self._tasks[tid]
        self._finish(t, body)
        if t.retries != 0 and any(d[0] == "s" for d in body.get("results") or ()):
            self._lineage[tid] = t  # kept to rebuild its results if their node dies
        if lease is not None:
            self._dispatch(t.key)

    # ------------------------------------------------------------------ leases
    def _request_lease(self, key) -> None:
        demand, opts = self._lease_opts[key]
        body = {"demand": demand, "owner": self.addr, "job_id": self.job_id,
                "node_id": self.node_id, "backlog": len(self._queues[key]),
                "outstanding": list(self._lease_reqs[key]), **opts}
        req_id = new_id()
        body["req_id"] = req_id
        body["reply_to"] = self.addr
        self._lease_reqs[key][req_id] = time.monotonic()
        self.send_head(P.REQUEST_LEASE, body)

    def _on_lease_granted(self, body, _bufs) -> None:
        with self._lock:
            key = next((k for k, reqs in self._lease_reqs.items()
                        if reqs.pop(body["req_id"], None) is not None), None)
            if body.get("error") is not None:  # it can never be scheduled: fail the queue
                if key is not None:
                    q = self._queues[key]
                    while q:
                        t = q.popleft()
                        self._tasks.pop(t.task_id, None)
                        self._fail(t, body["error"])
                return
            if key is None:  # cancelled meanwhile: hand the worker straight back
                self.send_head(P.RETURN_LEASE, {"worker_id": body["worker_id"]})
                return
            lease = Lease(body, key)
            self._leases[key].append(lease)
            self._lease_by_worker[lease.worker_id] = lease
            if not self._queues[key]:  # work waits behind busy workers: move it here
                busiest = max(self._leases[key], key=lambda le: len(le.inflight))
                if len(busiest.inflight) > 1:
                    self._steal(busiest)
            self._dispatch(key)

    def _return_lease(self, lease: Lease) -> None:
        self._leases[lease.key].remove(lease)
        self._lease_by_worker.pop(lease.worker_id, None)
        self.send_head(P.RETURN_LEASE, {"worker_id": lease.worker_id})

    def _return_all_leases(self) -> None:
        """At shutdown: every leased worker goes back to the head."""
        with self._lock:
            for leases in self._leases.values():
                for lease in leases:
                    self.send_head(P.RETURN_LEASE, {"worker_id": lease.worker_id})

    def _tick_leases(self, now: float) -> None:
        """IO thread, every tick: hand back idle workers, steal from slow ones, and
        report backlogs now and then."""
        with self._lock:
            for leases in list(self._leases.values()):
                for lease in list(leases):
                    action = policy.idle_action(lease, now)
                    if action == "return":
                        self._return_lease(lease)
                    elif action == "steal":
                        self._steal(lease)
        if now - self._last_backlog > BACKLOG_S:
            self._last_backlog = now
            self._report_backlogs()

    def _report_backlogs(self) -> None:
        """Tell the head how many tasks wait behind each shape's lease requests when that
        changed (the autoscaler sizes its demand by it, as Ray's backlog reports)."""
        with self._lock:
            for key, reqs in self._lease_reqs.items():
                if not reqs:
                    self._backlogs.pop(key, None)
                    continue
                n = len(self._queues[key])
                if self._backlogs.get(key) != n:
                    self._backlogs[key] = n
                    self.send_head(P.LEASE_BACKLOG, {"req_id": next(iter(reqs)),
                                                     "backlog": n, "outstanding": list(reqs)})

    def _on_worker_died(self, body, _bufs) -> None:
        with self._lock:
            lease = self._lease_by_worker.pop(body["worker_id"], None)
            if lease is None:
                return
            self._leases[lease.key].remove(lease)
            self.outbox.forget(lease.addr)
            self.outbox.forget(lease.core_addr)
            for t in list(lease.inflight.values()):
                t.lease = None
                if t.cancelled:
                    self._tasks.pop(t.task_id, None)
                    self._fail(t, exc.TaskCancelledError(t.task_id.hex()))
                elif t.retries != 0:
                    t.retries -= 1
                    self._log_retry(t)
                    self._enqueue(t, front=True)
                else:
                    self._tasks.pop(t.task_id, None)
                    self._fail(t, exc.WorkerCrashedError(
                        f"The worker running {t.name} died ({body.get('reason', 'unknown')}) "
                        "and the task has no retries left (max_retries)."))
            self._dispatch(lease.key)

    # ------------------------------------------------------------------ stealing
    def _steal(self, lease: Lease) -> None:
        """Ask a busy worker to give back the tasks queued behind its running one
        (lock held); it answers STOLEN with those it had not started."""
        if lease.stealing:
            return
        lease.stealing = True
        tail = list(lease.inflight)[1:]
        self.outbox.send(lease.core_addr, P.encode(P.STEAL, {"task_ids": tail,
                                                              "reply_to": self.addr}))

    def _on_stolen(self, body, _bufs) -> None:
        with self._lock:
            lease = self._lease_by_worker.get(body["worker_id"])
            if lease is None:
                return
            lease.stealing = False
            for tid in reversed(body["task_ids"]):
                t = lease.inflight.pop(tid, None)
                if t is not None:
                    t.lease = None
                    self._enqueue(t, front=True)
            self._dispatch(lease.key)

    def _on_steal(self, body, _bufs) -> None:
        """A worker's side: its lease owner takes back tasks it has not started."""
        got = self.steal_hook(body["task_ids"]) if self.steal_hook is not None else []
        self.outbox.send(body["reply_to"], P.encode(P.STOLEN, {
            "worker_id": self.worker_id, "task_ids": got}))

    def _on_worker_blocked(self, body, _bufs) -> None:
        """A leased worker blocked in ``get`` (it lent its CPU out): take back the tasks
        queued behind it so they run elsewhere."""
        with self._lock:
            lease = self._lease_by_worker.get(body["worker_id"])
            if lease is None:
                return
            lease.blocked = body["blocked"]
            if lease.blocked and len(lease.inflight) > 1:
                self._steal(lease)
            self._dispatch(lease.key)
