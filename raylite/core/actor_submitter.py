"""The actor submitter: the caller's side of actors (Ray's actor-task submitter).

Calls go straight from this process to the actor's worker (ACTOR_CALL), in submission
order: a call waits in the actor's queue until its arguments are ready and every call
before it was sent. The actor's address comes from the head (GET_ACTOR_INFO, then its
EV_ACTOR events). When the actor restarts, calls in flight are retried while they have
``max_task_retries`` left and fail otherwise; when it is dead, every call fails with
its error. ``max_pending_calls`` refuses a call while that many from here are
unfinished. Back-pressure (``Outbox``): a caller blocks while the outbox backlog to the
actor is full, and queued calls are held back here (sent at a later tick) rather than
overfill it. An actor created here without a name ends when its last handle anywhere is
gone (its handle count is an ``("actor", id)`` entry of the reference table). Part of
the CoreWorker (``self`` is it); lock held unless said otherwise.
"""

from __future__ import annotations

import collections

from raylite import exceptions as exc
from raylite.core import protocol as P
from raylite.core.object_ref import new_id, return_id
from raylite.core.reference_table import Entry
from raylite.core.task_spec import Task, build_task


class ActorState:
    """What a caller knows of one actor."""

    __slots__ = ("actor_id", "addr", "core_addr", "state", "error", "queue", "inflight",
                 "asked", "max_task_retries", "name", "node_id", "worker_id")

    def __init__(self, actor_id: bytes, max_task_retries: int = 0, name: str = ""):
        self.actor_id = actor_id
        self.addr = None
        self.core_addr = None
        self.state = "PENDING"
        self.error = None
        self.queue: collections.deque = collections.deque()
        self.inflight: dict[bytes, Task] = {}
        self.asked = False
        self.max_task_retries = max_task_retries
        self.name = name
        self.node_id = None
        self.worker_id = None


class ActorSubmitterPart:
    """Actor creation, calls, restarts and kills (``self`` is the CoreWorker)."""

    def _init_actor_submitter(self) -> None:
        self._actors: dict[bytes, ActorState] = {}
        self._held_actors: set[ActorState] = set()  # calls held back: the outbox is full

    def create_actor(self, spec: dict, args, kwargs, max_task_retries: int):
        """Ask the head to create an actor; named actors wait for the head's answer."""
        args_desc = self.describe((args, kwargs))
        actor_id = new_id()
        spec = dict(spec, actor_id=actor_id, args=args_desc, owner=self.addr,
                    job_id=self.job_id)
        with self._lock:
            self._actors[actor_id] = ActorState(actor_id, max_task_retries,
                                                spec.get("name", ""))
            if not spec.get("name") and spec.get("lifetime") != "detached":
                # its handles are counted under this key; when none is left, it ends
                entry = self._objects[b"A" + actor_id] = Entry(None)
                entry.desc = ("actor", actor_id)
        if spec.get("name"):
            info = self.request_head(P.CREATE_ACTOR, spec)
            if info["actor_id"] != actor_id:  # get_if_exists found one
                with self._lock:
                    self._actors.pop(actor_id, None)
            return info
        self.send_head(P.CREATE_ACTOR, spec)
        return {"actor_id": actor_id, "meta": spec["meta"]}

    def submit_actor_task(self, actor_id: bytes, method: str, args, kwargs, nret,
                          max_task_retries: int = 0, group: str | None = None,
                          max_pending: int = -1):
        """Submit an actor call (any thread); returns its refs or its generator. Blocks
        (holding nothing) while the actor's backlog in the outbox is full: a caller that
        outruns an actor that does not read is slowed, not its memory grown (Ray queues
        without bound)."""
        a = self._actors.get(actor_id)
        if a is not None and a.addr is not None:
            self.outbox.throttle(a.addr)
        fields = {"method": method}
        if group is not None:
            fields["group"] = group  # the actor's concurrency group that runs it
        t = build_task(self, method, args, kwargs, nret, max_task_retries, fields,
                       actor_id=actor_id)
        out = self._register_returns(t)
        with self._lock:
            if max_pending > 0:
                self._check_pending_calls(t, max_pending)
            if self._task_log_on:
                self._log_submitted(t)
            a = self._actors.get(actor_id)
            if a is None:
                a = self._actors[actor_id] = ActorState(actor_id, max_task_retries)
            self._tasks[t.task_id] = t
            if a.state == "DEAD":
                self._tasks.pop(t.task_id, None)
                self._fail(t, self._actor_error(a))
                return out
            a.queue.append(t)
            self._await_deps(t, lambda: self._pump_actor(a))
        return out

    def _check_pending_calls(self, t: Task, limit: int) -> None:
        """Refuse a call while ``limit`` calls from here to its actor are unfinished
        (max_pending_calls, as Ray); the refused call leaves nothing behind."""
        a = self._actors.get(t.actor_id)
        if a is None or len(a.queue) + len(a.inflight) < limit:
            return
        for i in range(t.nret):
            self._objects.pop(return_id(t.task_id, i), None)
        self._streams.pop(t.task_id, None)
        raise exc.PendingCallsLimitExceeded(
            f"The actor {a.name or a.actor_id.hex()} has {limit} pending calls from this "
            f"process (max_pending_calls={limit}); wait for some to finish before calling "
            f"{t.name} again.")

    def _actor_error(self, a: ActorState) -> BaseException:
        if isinstance(a.error, BaseException):
            return a.error
        return exc.ActorDiedError(
            f"The actor {a.name or a.actor_id.hex()} died: {a.error or 'its process exited'}.",
            a.actor_id.hex())

    def _pump_actor(self, a: ActorState) -> None:
        """Send queued calls in order while the actor is alive and args are ready."""
        if a.state != "ALIVE":
            if not a.asked:
                a.asked = True
                self._request_actor_info(a)
            return
        while a.queue and a.queue[0].pending == 0:
            if self.outbox.full(a.addr):  # back-pressure: the rest wait here, in order
                self._held_actors.add(a)
                return
            t = a.queue.popleft()
            if t.cancelled:
                continue
            body = t.body
            if t.deps:
                body = dict(body, deps=self._dep_descs(t))
            t.lease = a
            a.inflight[t.task_id] = t
            if self._task_log_on:
                self._log_sent(t, a.node_id, a.worker_id)
            self.outbox.send(a.addr, P.encode(P.ACTOR_CALL, body))

    def _request_actor_info(self, a: ActorState) -> None:
        body = {"actor_id": a.actor_id, "wait": True}

        def on_info(fut):
            try:
                info = fut.result()
            except BaseException as e:
                info = {"state": "DEAD", "error": e}
            with self._lock:
                self._apply_actor_state(a, info)
        self._new_request(body, on_info)
        self.send_head(P.GET_ACTOR_INFO, body)

    def _pump_held_actors(self) -> None:
        """IO thread, every tick: send the calls held back while the outbox backlog to
        their actor was full, once it has room (or the actor is gone)."""
        with self._lock:
            for a in list(self._held_actors):
                if a.state != "ALIVE":  # its calls were retried or failed meanwhile
                    self._held_actors.discard(a)
                elif not self.outbox.full(a.addr):
                    self._held_actors.discard(a)
                    self._pump_actor(a)

    def _apply_actor_state(self, a: ActorState, info: dict) -> None:
        state = info["state"]
        if state == "ALIVE":
            if a.state == "ALIVE" and a.addr == info["addr"]:
                return
            a.state, a.addr, a.core_addr = "ALIVE", info["addr"], info["core_addr"]
            a.node_id, a.worker_id = info.get("node_id"), info.get("worker_id")
            a.asked = False
            self._pump_actor(a)
            return
        if state in ("RESTARTING", "DEAD"):
            if a.state == "DEAD":
                return
            a.state = state
            a.error = info.get("error")
            if a.addr:
                self.outbox.forget(a.addr)
            self._calls_lost(a, state)

    def _calls_lost(self, a: ActorState, state: str) -> None:
        """The actor is restarting or dead: retry or fail the calls in flight, and fail
        the queued ones too when it is dead."""
        lost = list(a.inflight.values())
        a.inflight.clear()
        retry = []
        for t in lost:
            if state == "RESTARTING" and t.retries != 0 and not t.cancelled:
                t.retries -= 1
                self._log_retry(t)
                retry.append(t)
            else:
                self._tasks.pop(t.task_id, None)
                self._fail(t, self._actor_error(a) if state == "DEAD" else
                           exc.ActorDiedError(
                               f"The actor {a.name or a.actor_id.hex()} died while running "
                               f"{t.name}; it is restarting (max_task_retries=0, so the call "
                               "is not retried).", a.actor_id.hex()))
        a.queue.extendleft(reversed(retry))
        if state == "DEAD":
            for t in a.queue:
                self._tasks.pop(t.task_id, None)
                self._fail(t, self._actor_error(a))
            a.queue.clear()
        else:
            a.asked = False
            self._pump_actor(a)

    def _actor_task_done(self, t: Task, body) -> None:
        a = self._actors.get(t.actor_id)
        if a is not None:
            a.inflight.pop(t.task_id, None)
        del self._tasks[t.task_id]
        self._finish(t, body)

    def _on_actor_event(self, body, _bufs) -> None:
        with self._lock:
            a = self._actors.get(body["actor_id"])
            if a is not None:
                self._apply_actor_state(a, body)

    def kill_actor(self, actor_id: bytes, no_restart: bool) -> None:
        self.send_head(P.KILL_ACTOR, {"actor_id": actor_id, "no_restart": no_restart})
        if no_restart:  # calls made from here on fail at once, not after the head's news
            with self._lock:
                a = self._actors.get(actor_id)
                if a is None:
                    a = self._actors[actor_id] = ActorState(actor_id)
                self._apply_actor_state(a, {"state": "DEAD", "error": exc.ActorDiedError(
                    f"The actor {a.name or actor_id.hex()} was killed with raylite.kill.",
                    actor_id.hex())})

    def _end_actor(self, actor_id: bytes) -> None:
        """The last handle of an actor we own is gone: it finishes the calls made so far
        and exits, without a restart (lock held)."""
        a = self._actors.get(actor_id)
        if a is None or a.state == "DEAD":
            return
        self.send_head(P.KILL_ACTOR, {"actor_id": actor_id, "no_restart": True,
                                      "graceful": True})
        self.submit_actor_task(actor_id, "__ray_terminate__", (), {}, 1)
