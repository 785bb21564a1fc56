"""The task manager: the tasks and actor calls this process submitted, from their return
objects to their results (Ray's task manager).

It makes a task's return entries, waits for its ObjectRef arguments, records what a task
returned (or the error it failed with) into the reference table, decides retries of
application errors (``retry_exceptions``), cancels, and keeps the *lineage* of finished
retryable tasks whose results live in a store: when a node dies, the objects that lived
only there are rebuilt by running their task again (as Ray does); the rest raise
ObjectLostError when read. How a task reaches a worker is the submitters' business
(``task_submitter``, ``actor_submitter``). Part of the CoreWorker (``self`` is it).
"""

from __future__ import annotations

from raylite import exceptions as exc
from raylite.core import protocol as P
from raylite.core import serialization as ser
from raylite.core.object_ref import ObjectRef, ObjectRefGenerator, return_id
from raylite.core.reference_table import Entry
from raylite.core.streams import Stream
from raylite.core.task_spec import Task


class TasksPart:
    """Task table, results, retries, cancellation, lineage (``self`` is the CoreWorker)."""

    def _init_tasks(self) -> None:
        self._tasks: dict[bytes, Task] = {}
        self._lineage: dict[bytes, Task] = {}  # finished tasks whose results are in stores

    def _register_returns(self, t: Task):
        """Make the entries of a new task's return objects; return its refs (or its
        generator, for a streaming task)."""
        tid = t.task_id
        with self._lock:
            for i in range(t.nret):
                self._objects[return_id(tid, i)] = Entry(None)
            if t.stream:
                self._streams[tid] = Stream()
        if t.stream:
            return ObjectRefGenerator(tid, self.addr, self)
        return [ObjectRef(return_id(tid, i), self.addr, self) for i in range(t.nret)]

    def _await_deps(self, t: Task, then) -> None:
        """Run ``then`` once every dependency of ``t`` has a value (lock held)."""
        pending = []
        for r in t.deps:
            entry = self._entry_for(r)
            if entry.desc is None:
                pending.append(entry)
                if entry.owner is not None:
                    self._request_borrowed(r.id, entry)
        if not pending:
            then()
            return
        t.pending = len(pending)

        def one_ready():
            t.pending -= 1
            if t.pending == 0:
                then()
        for entry in pending:
            entry.callbacks.append(one_ready)

    def _dep_descs(self, t: Task) -> list:
        return [self._objects[r.id].desc for r in t.deps]

    # ------------------------------------------------------------------ results
    def _on_task_done(self, body, _bufs) -> None:
        tid = body["task_id"]
        with self._lock:
            t = self._tasks.get(tid)
            if t is None:
                return
            if t.actor_id is not None:
                if self._task_log_on:
                    self._log_done(tid, body)
                self._actor_task_done(t, body)
                return
            self._normal_task_done(t, body)

    def _should_retry(self, t: Task, body) -> bool:
        """Whether an application error is one ``retry_exceptions`` retries."""
        if not t.retry_exc or not body.get("app_error"):
            return False
        if t.retry_exc is True:
            return True
        try:
            err = ser.deserialize(body["error"][1])
            cause = getattr(err, "cause", err)
            return isinstance(cause, tuple(t.retry_exc))
        except Exception:
            return False

    def _finish(self, t: Task, body) -> None:
        """Record a finished task's results (lock held)."""
        tid = t.task_id
        if t.stream:
            self._end_stream(tid, body)
            return
        err = body.get("error")
        if err is not None:
            for i in range(t.nret):
                self._set_ready(return_id(tid, i), err)
            return
        for i, desc in enumerate(body["results"]):
            self._set_ready(return_id(tid, i), desc)

    def _fail(self, t: Task, error: BaseException) -> None:
        if self._task_log_on:  # the state API sees it end (cancelled, actor died, ...)
            self._log_failed(t, error)
        self._finish(t, {"error": ser.error_descriptor(error)})

    # ------------------------------------------------------------------ cancel
    def cancel(self, ref: ObjectRef, force: bool, recursive: bool = True) -> None:
        self.cancel_task(ref.id[:16], force, recursive)

    def cancel_task(self, tid: bytes, force: bool, recursive: bool) -> None:
        """Cancel a task this process submitted: drop it if not dispatched yet, else ask
        its worker, which with ``recursive`` also cancels the tasks it submitted."""
        with self._lock:
            t = self._tasks.get(tid)
            if t is None:
                return
            t.cancelled = True
            if t.lease is None:  # not dispatched yet: drop it
                q = self._queues.get(t.key)
                if q is not None and t in q:
                    q.remove(t)
                if t.actor_id is not None:
                    a = self._actors.get(t.actor_id)
                    if a is not None and t in a.queue:
                        a.queue.remove(t)
                self._tasks.pop(tid, None)
                self._fail(t, exc.TaskCancelledError(tid.hex()))
                if t.actor_id is None and t.key in self._queues:
                    self._dispatch(t.key)  # withdraws lease requests it no longer needs
                return
            core_addr = t.lease.core_addr
        self.outbox.send(core_addr, P.encode(P.CANCEL, {
            "task_id": tid, "force": force, "recursive": recursive, "reply_to": self.addr}))

    def cancel_children(self, parent: bytes, force: bool) -> None:
        """Cancel, recursively, the unfinished tasks this process submitted while running
        ``parent``."""
        with self._lock:
            kids = [t.task_id for t in self._tasks.values()
                    if t.parent == parent and not t.cancelled]
        for tid in kids:
            self.cancel_task(tid, force, True)

    def _on_cancel(self, body, _bufs) -> None:
        """A worker's side: the owner cancels a task running here (with ``recursive``,
        its children first: with ``force`` this process is killed next, and the head
        then also kills the workers it leased)."""
        if body["recursive"]:
            self.cancel_children(body["task_id"], body["force"])
        if self.cancel_hook is not None:
            self.cancel_hook(body["task_id"], body["force"], body["reply_to"])

    # ------------------------------------------------------------------ lineage
    def _on_node_event(self, body, _bufs) -> None:
        """A node died: objects we own that lived only in its store are lost. Rebuild
        those a retryable task produced by running it again; the rest raise
        ObjectLostError when read."""
        if body["alive"]:
            return
        dead = body["node_id"]
        with self._lock:
            rerun: dict[bytes, Task] = {}
            for oid, entry in list(self._objects.items()):
                desc = entry.desc
                if entry.owner is not None or desc is None or desc[0] != "s" or desc[1] != dead:
                    continue
                t = self._lineage.get(oid[:16])
                if t is not None and t.retries != 0:
                    entry.desc = None
                    rerun[t.task_id] = t
                else:
                    entry.desc = ser.error_descriptor(exc.ObjectLostError(
                        oid.hex(), f"Object {oid.hex()} was lost: its node {dead} died and "
                        "it cannot be rebuilt (it was put, or its task has no retries left)."))
            for tid, t in rerun.items():
                del self._lineage[tid]
                t.retries -= 1
                self._log_retry(t)
                t.lease = None
                for i in range(t.nret):  # results still on live nodes are recomputed too
                    e = self._objects.get(return_id(tid, i))
                    if e is not None:
                        e.desc = None
                self._tasks[tid] = t
                self._enqueue(t)
