"""The CoreWorker: the part of every driver and worker that submits work and owns objects.

It follows Ray's ownership and worker-lease design:

- The process that submits a task *owns* its return objects: results come back straight
  from the worker to the owner's inbox, and other processes ask the owner for the value.
- To run tasks, the owner asks the head for a *lease* on a worker for a resource shape.
  Once granted, tasks flow owner -> worker and results worker -> owner with no other hop;
  a lease is kept while tasks of that shape keep coming and handed back when idle.
- Actor calls go straight from caller to the actor's worker, in submission order.

One IO thread reads the inbox (results, replies, object requests) and the head's event
stream; any thread may send (``Outbox`` is thread-safe), so submitting a task costs no
thread hop. All bookkeeping is guarded by one lock.
"""

from __future__ import annotations

import _thread
import collections
import concurrent.futures
import logging
import os
import sys
import threading
import time
from concurrent.futures import Future

import zmq

from raylite import exceptions as exc
from raylite.core import protocol as P
from raylite.core import serialization as ser
from raylite.core import store
from raylite.core.object_ref import ObjectRef, ObjectRefGenerator, new_id, return_id
from raylite.core.transport import Outbox, Transport

log = logging.getLogger(__name__)

PIPELINE_DEPTH = int(os.environ.get("RAYLITE_PIPELINE_DEPTH", "4"))
PIPELINE_MAX_TASK_S = 0.002  # pipeline only tasks that take less than this on average
PIPELINE_MAX_AGE_S = 0.005   # ... and only behind a task sent less than this ago
STEAL_AFTER_S = 0.01         # take back tasks queued behind one running longer than this
LEASE_IDLE_S = float(os.environ.get("RAYLITE_LEASE_IDLE_S", "0.1"))
PULL_TIMEOUT_S = 120.0       # a backstop: the agent fails a stalled pull much sooner
BACKLOG_S = 0.2              # how often queue lengths behind lease requests are reported
TASK_EVENTS_S = 0.1          # how often task records go to the head (state API, timeline)
MAX_LEASE_REQUESTS = 8


class HeadDiedError(exc.RayliteSystemError):
    """The head process exited while we waited for it (e.g. its port was taken)."""


_NO_ARGS = ("i", ser.pickle.dumps(((), {}), 5), [])


class _Dep:
    """Placeholder for a top-level ObjectRef argument, resolved before the task runs."""

    __slots__ = ("i",)

    def __init__(self, i: int):
        self.i = i

    def __reduce__(self):
        return (_Dep, (self.i,))


class _Waiter:
    """Wakes one blocked ``get``/``wait`` once ``remaining`` objects are ready. A bare
    lock, held until then: cheaper to wake than a threading.Event."""

    __slots__ = ("remaining", "_lock")

    def __init__(self, remaining: int):
        self.remaining = remaining
        self._lock = _thread.allocate_lock()
        self._lock.acquire()

    def notify(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self._lock.release()

    def wait(self, timeout: float | None) -> bool:
        return self._lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout))


class _Entry:
    """An object this process owns or borrows."""

    __slots__ = ("desc", "waiters", "refs", "escaped", "owner", "requested", "callbacks",
                 "remote_waiters", "borrowers", "nested")

    def __init__(self, owner: str | None):
        self.desc = None
        self.waiters = []
        self.refs = 0
        self.escaped = False
        self.owner = owner  # None when owned here
        self.requested = False
        self.callbacks = []
        self.remote_waiters = []
        self.borrowers: set | None = None  # owned here: processes holding refs to it
        self.nested = None  # the ObjectRefs inside its value, kept alive as long as it is

    def unused(self) -> bool:
        """Nothing refers to it any more: it can be freed (owned) or forgotten."""
        return self.refs <= 0 and not self.escaped and not self.borrowers and \
            not self.remote_waiters and not self.callbacks


class _Task:
    __slots__ = ("task_id", "key", "body", "deps", "pending", "retries", "retry_exc", "lease",
                 "cancelled", "nret", "fn_id", "fn_bytes", "name", "actor_id", "stream",
                 "sent", "nested", "attempts")

    def __init__(self):
        self.attempts = 1  # runs started so far (retries add one each)
        self.lease = None
        self.cancelled = False
        self.pending = 0
        self.actor_id = None


class _Lease:
    __slots__ = ("worker_id", "addr", "core_addr", "node_id", "key", "inflight", "idle_since",
                 "blocked", "gpu_ids", "fns", "stealing", "exiting")

    def __init__(self, body: dict, key):
        self.worker_id = body["worker_id"]
        self.addr = body["addr"]
        self.core_addr = body["core_addr"]
        self.node_id = body["node_id"]
        self.gpu_ids = body.get("gpu_ids", ())
        self.key = key
        self.inflight: dict[bytes, _Task] = {}
        self.idle_since = time.monotonic()
        self.blocked = False
        self.stealing = False
        self.exiting = False  # it ran its max_calls: used no more, never handed back
        self.fns: set = set()


class _Actor:
    __slots__ = ("actor_id", "addr", "core_addr", "state", "error", "queue", "inflight",
                 "asked", "max_task_retries", "name", "node_id", "worker_id")

    def __init__(self, actor_id: bytes, max_task_retries: int = 0, name: str = ""):
        self.actor_id = actor_id
        self.addr = None
        self.core_addr = None
        self.state = "PENDING"
        self.error = None
        self.queue: collections.deque = collections.deque()
        self.inflight: dict[bytes, _Task] = {}
        self.asked = False
        self.max_task_retries = max_task_retries
        self.name = name
        self.node_id = None
        self.worker_id = None


class _Stream:
    __slots__ = ("received", "end", "waiters")

    def __init__(self):
        self.received = 0
        self.end = None
        self.waiters = []


class CoreWorker:
    """Submits tasks and actor calls, owns objects, resolves gets. One per process."""

    def __init__(self, head_addr: str, *, node_id: str, session: str, job_id: str,
                 host_dirs: dict | None = None, token: str | None = None,
                 bind_host: str = "127.0.0.1", mode: str = "driver", worker_id: str = "",
                 namespace: str = ""):
        self.head_addr = head_addr
        self.node_id = node_id
        self.session = session
        self.job_id = job_id
        self.mode = mode
        self.worker_id = worker_id
        self.namespace = namespace
        self.store_dir = store.node_dir(session, node_id)
        self.transport = Transport(token, bind_host)
        self.outbox = Outbox(self.transport)
        self.inbox, self.addr = self.transport.bind()
        self.sub = self.transport.connect(head_addr.rsplit(":", 1)[0] + ":" + str(
            int(head_addr.rsplit(":", 1)[1]) + 1), zmq.SUB)
        for topic in (P.EV_ACTOR, P.EV_OWNER_DIED, P.EV_LOG, P.EV_NODE, P.EV_PING):
            self.sub.setsockopt(zmq.SUBSCRIBE, topic)  # not the state-API topics (widgets)
        self._lock = threading.RLock()
        self._objects: dict[bytes, _Entry] = {}
        self._releases: collections.deque = collections.deque()
        self._tasks: dict[bytes, _Task] = {}
        self._queues: dict[tuple, collections.deque] = {}
        self._leases: dict[tuple, list[_Lease]] = {}
        self._lease_reqs: dict[tuple, dict[bytes, float]] = {}
        self._lease_by_worker: dict[str, _Lease] = {}
        self._task_time: dict[tuple, float] = {}  # scheduling key -> moving average run time
        self._spread_keys: set[tuple] = set()
        self._lineage: dict[bytes, _Task] = {}  # finished tasks whose results are in stores
        self._lease_opts: dict[tuple, tuple] = {}
        self._actors: dict[bytes, _Actor] = {}
        self._streams: dict[bytes, _Stream] = {}
        self._requests: dict[bytes, object] = {}
        self._dead_owners: set[str] = set()
        self._node_addrs: dict[str, str] = {}
        self.blocked_hook = None  # set by a worker: called around a blocking get
        self.cancel_hook = None   # set by a worker: cancels a running task
        self.steal_hook = None    # set by a worker: gives back tasks it has not started
        self.log_hook = None      # set by a driver: prints worker output
        # task records for the state API and timeline, sent to the head in batches:
        # P.task_record: [tid, name, job_id, actor_id, submitted, sent, node_id, worker_id,
        # start, end, error, attempts]
        self._task_log: dict[bytes, list] = {}
        self._task_log_on = os.environ.get("RAYLITE_TASK_EVENTS", "1") != "0"
        self._last_task_flush = 0.0
        self._last_backlog = 0.0
        self._backlogs: dict[tuple, int] = {}  # key -> queue length last told to the head
        self._stop = False
        self._last_tick = 0.0
        self._last_heartbeat = 0.0
        self._handlers = {
            P.TASK_DONE: self._on_task_done, P.STREAM_ITEM: self._on_stream_item,
            P.LEASE_GRANTED: self._on_lease_granted, P.WORKER_DIED: self._on_worker_died,
            P.WORKER_BLOCKED_NOTICE: self._on_worker_blocked, P.STOLEN: self._on_stolen,
            P.STEAL: self._on_steal, P.WAKE: lambda body, bufs: None,
            P.REPLY: self._on_reply, P.GET_OBJECT: self._on_get_object,
            P.OBJECT: self._on_object, P.CANCEL: self._on_cancel,
            P.ADD_BORROWER: self._on_add_borrower, P.REMOVE_BORROWER: self._on_remove_borrower,
        }
        self._io = threading.Thread(target=self._io_loop, name="raylite-io", daemon=True)
        self._io.start()

    # ------------------------------------------------------------------ messaging
    def send_head(self, msg_type: bytes, body: dict) -> None:
        self.outbox.send(self.head_addr, P.encode(msg_type, body))

    def request_head(self, msg_type: bytes, body: dict, timeout: float | None = 30.0,
                     abort=None):
        """Send a request to the head and wait for its REPLY (giving up early when
        ``abort()`` turns true, e.g. the head process died)."""
        fut = self._new_request(body)
        self.send_head(msg_type, body)
        try:
            return self._await_reply(fut, msg_type, timeout, abort)
        finally:  # answered, timed out or interrupted: the request is not kept
            self._requests.pop(body["req_id"], None)

    def _await_reply(self, fut: Future, msg_type: bytes, timeout, abort):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = 0.05 if abort is not None else None
            if deadline is not None:
                step = min(step or timeout, max(0.0, deadline - time.monotonic()))
            try:
                return fut.result(step)
            except TimeoutError:
                if abort is not None and abort():
                    raise HeadDiedError(f"the head at {self.head_addr} exited") from None
                if deadline is not None and time.monotonic() >= deadline:
                    raise exc.RayliteSystemError(
                        f"The head at {self.head_addr} did not answer {msg_type.decode()} "
                        f"within {timeout}s; is the cluster still running?") from None

    def _new_request(self, body: dict, callback=None) -> Future:
        req_id = new_id()
        fut = Future()
        if callback is not None:
            fut.add_done_callback(callback)
        self._requests[req_id] = fut
        body["req_id"] = req_id
        body["reply_to"] = self.addr
        return fut

    def _on_reply(self, body, _bufs) -> None:
        fut = self._requests.pop(body["req_id"], None)
        if fut is None:
            return
        if body.get("error") is not None:
            fut.set_exception(body["error"])
        else:
            fut.set_result(body.get("value"))

    def _io_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.inbox, zmq.POLLIN)
        poller.register(self.sub, zmq.POLLIN)
        inbox, sub = self.inbox, self.sub
        while not self._stop:
            try:
                ready = dict(poller.poll(20))
            except zmq.ZMQError:
                break
            if inbox in ready:
                self._drain(inbox, routed=True)
            if sub in ready:
                self._drain(sub, routed=False)
            if self._releases:
                self._process_releases()
            now = time.monotonic()
            if now - self._last_tick > 0.02:
                self._last_tick = now
                self._tick(now)

    def _drain(self, sock, routed: bool) -> None:
        for _ in range(1000):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return
            try:
                mtype, body, bufs = P.decode(frames, routed)
            except P.InvalidMessage as e:
                log.warning("dropped an invalid message: %s", e)
                continue
            try:
                if routed:
                    handler = self._handlers.get(mtype)
                else:
                    handler = self._event_handlers.get(mtype)
                if handler is None:
                    log.warning("unexpected message %r", mtype)
                    continue
                handler(body, bufs)
            except Exception:
                log.exception("error handling a message")

    def _tick(self, now: float) -> None:
        with self._lock:
            for leases in list(self._leases.values()):
                for lease in list(leases):
                    if lease.exiting:  # WORKER_DIED removes it once the worker is gone
                        continue
                    if not lease.inflight:
                        if now - lease.idle_since > LEASE_IDLE_S:
                            self._return_lease(lease)
                    elif len(lease.inflight) > 1 and \
                            now - next(iter(lease.inflight.values())).sent > STEAL_AFTER_S:
                        self._steal(lease)
        if now - self._last_backlog > BACKLOG_S:
            self._last_backlog = now
            self._report_backlogs()
        if self._task_log and now - self._last_task_flush > TASK_EVENTS_S:
            self._last_task_flush = now
            self.flush_task_events()
        if self.mode == "driver" and now - self._last_heartbeat > 1.0:
            self._last_heartbeat = now
            self.send_head(P.HEARTBEAT, {"job_id": self.job_id, "core_addr": self.addr})

    # ------------------------------------------------------------------ objects
    def add_local_ref(self, oid: bytes, owner: str) -> None:
        entry = self._objects.get(oid)
        if entry is None:
            with self._lock:
                entry = self._objects.get(oid)
                if entry is None:
                    entry = self._new_entry(oid, owner)
        entry.refs += 1

    def _new_entry(self, oid: bytes, owner: str) -> _Entry:
        """The entry of a ref first seen here (lock held). A borrowed ref registers this
        process with the owner, which keeps the object until every borrower lets go."""
        if owner == self.addr:
            entry = self._objects[oid] = _Entry(None)
        else:
            entry = self._objects[oid] = _Entry(owner)
            if owner not in self._dead_owners:
                self.outbox.send(owner, P.encode(P.ADD_BORROWER, {"oid": oid,
                                                                  "addr": self.addr}))
        return entry

    def remove_local_ref(self, oid: bytes) -> None:
        self._releases.append(oid)

    def _process_releases(self) -> None:
        with self._lock:
            while self._releases:
                oid = self._releases.popleft()
                entry = self._objects.get(oid)
                if entry is None:
                    continue
                entry.refs -= 1
                self._maybe_free(oid, entry)

    def _maybe_free(self, oid: bytes, entry: _Entry) -> None:
        """Free an owned object, or forget a borrowed one, once nothing refers to it
        (lock held)."""
        if not entry.unused() or (entry.desc is None and entry.owner is None):
            return
        del self._objects[oid]
        if entry.owner is not None:
            if entry.owner not in self._dead_owners:
                self.outbox.send(entry.owner, P.encode(P.REMOVE_BORROWER, {
                    "oid": oid, "addr": self.addr}))
            return
        self._free_desc(entry)
        self._lineage.pop(oid[:16], None)
        entry.nested = None  # the refs inside go now (their releases queue up)

    def _on_add_borrower(self, body, _bufs) -> None:
        with self._lock:
            entry = self._objects.get(body["oid"])
            if entry is not None and entry.owner is None:
                if entry.borrowers is None:
                    entry.borrowers = set()
                entry.borrowers.add(body["addr"])

    def _on_remove_borrower(self, body, _bufs) -> None:
        with self._lock:
            oid = body["oid"]
            entry = self._objects.get(oid)
            if entry is not None and entry.borrowers:
                entry.borrowers.discard(body["addr"])
                self._maybe_free(oid, entry)

    def _free_desc(self, entry: _Entry) -> None:
        desc = entry.desc
        if entry.owner is None and desc is not None and desc[0] == "s":
            store.delete_everywhere(desc[2])
        elif desc is not None and desc[0] == "actor":
            self._end_actor(desc[1])

    def _end_actor(self, actor_id: bytes) -> None:
        """The last handle of an actor we own is gone: it finishes the calls made so far
        and exits, without a restart (lock held)."""
        a = self._actors.get(actor_id)
        if a is None or a.state == "DEAD":
            return
        self.send_head(P.KILL_ACTOR, {"actor_id": actor_id, "no_restart": True,
                                      "graceful": True})
        self.submit_actor_task(actor_id, "__ray_terminate__", (), {}, 1)

    def put(self, value, _owner_hint=None) -> ObjectRef:
        if self._releases:  # free what was dropped first: its file can take this value
            self._process_releases()
        s = ser.serialize(value)
        oid = new_id()
        desc = self._make_desc(s, oid)
        with self._lock:
            entry = self._objects[oid] = _Entry(None)
            entry.desc = desc
            if s.refs:  # refs inside live as long as this object (Ray: "contained in")
                entry.nested = s.refs
        return ObjectRef(oid, self.addr, self)

    def _make_desc(self, s: ser.Serialized, oid: bytes) -> tuple:
        if s.size <= ser.INLINE_LIMIT:
            return ("i", s.meta, [bytes(b) for b in s.buffers])
        if not os.path.isdir(self.store_dir):
            # only the node's agent makes its store: recreating it here (a late put while
            # the cluster stops) would leave a directory in /dev/shm that nobody removes
            raise exc.RayliteSystemError(
                f"The object store of node {self.node_id} ({self.store_dir}) is gone: the "
                "node stopped or the cluster is shutting down.")
        cap = store.capacity()
        if cap is not None:
            store.make_room(self.store_dir, s.size + 4096, cap)
        path, size = store.write(self.store_dir, oid.hex(), s)
        return ("s", self.node_id, path, size)

    def _mark_escaped(self, refs) -> None:
        for r in refs:
            e = self._objects.get(r.id)
            if e is not None:
                e.escaped = True

    def _set_ready(self, oid: bytes, desc: tuple) -> None:
        """Record an object's value and wake whoever waits for it (lock held)."""
        entry = self._objects.get(oid)
        if entry is None:
            if desc[0] == "s" and desc[1] == self.node_id:
                store.delete(desc[2])
            return
        if entry.desc is not None:
            return
        entry.desc = desc
        for w in entry.waiters:
            w.notify()
        entry.waiters = []
        callbacks, entry.callbacks = entry.callbacks, []
        for cb in callbacks:
            cb()
        for reply_to in entry.remote_waiters:
            self.outbox.send(reply_to, P.encode(P.OBJECT, {"oid": oid, "desc": desc}))
        entry.remote_waiters = []
        if entry.owner is None and entry.unused():
            del self._objects[oid]
            self._free_desc(entry)

    def _entry_for(self, ref: ObjectRef) -> _Entry:
        """The entry of a ref, made if missing (a ref deserialised before this core
        existed, e.g. across a shutdown/init); lock held."""
        entry = self._objects.get(ref.id)
        if entry is None:
            entry = self._new_entry(ref.id, ref.owner)
            entry.refs += 1
        return entry

    def _on_get_object(self, body, _bufs) -> None:
        oid = body["oid"]
        with self._lock:
            entry = self._objects.get(oid)
            if entry is None or entry.owner is not None:
                desc = ser.error_descriptor(exc.ObjectFreedError(
                    oid.hex(), f"Object {oid.hex()} was freed by its owner or never existed."))
            elif entry.desc is None:
                entry.remote_waiters.append(body["reply_to"])
                return
            else:
                desc = entry.desc
        self.outbox.send(body["reply_to"], P.encode(P.OBJECT, {"oid": oid, "desc": desc}))

    def _on_object(self, body, _bufs) -> None:
        with self._lock:
            self._set_ready(body["oid"], body["desc"])

    def _request_borrowed(self, oid: bytes, entry: _Entry) -> None:
        """Ask the owner for a borrowed object (lock held)."""
        if entry.requested or entry.desc is not None:
            return
        entry.requested = True
        if entry.owner in self._dead_owners:
            self._set_ready(oid, ser.error_descriptor(exc.OwnerDiedError(
                oid.hex(), f"The owner of object {oid.hex()} ({entry.owner}) died.")))
            return
        self.outbox.send(entry.owner, P.encode(P.GET_OBJECT, {"oid": oid, "reply_to": self.addr}))

    def get(self, refs: list[ObjectRef], timeout: float | None = None) -> list:
        """Wait for and deserialise the values of ``refs``."""
        waiter = None
        with self._lock:
            pending = 0
            for r in refs:
                entry = self._entry_for(r)
                if entry.desc is None:
                    pending += 1
                    if entry.owner is not None:
                        self._request_borrowed(r.id, entry)
            if pending:
                waiter = _Waiter(pending)
                for r in refs:
                    entry = self._objects[r.id]
                    if entry.desc is None:
                        entry.waiters.append(waiter)
        if waiter is not None and waiter.remaining > 0:
            self._block_until(waiter, timeout)
        return [self._value(r) for r in refs]

    def _block_until(self, waiter: _Waiter, timeout: float | None) -> None:
        hook = self.blocked_hook
        if hook is not None:
            hook(True)
        try:
            if not waiter.wait(timeout):
                raise exc.GetTimeoutError(
                    f"get timed out after {timeout}s: {waiter.remaining} object(s) not ready.")
        finally:
            if hook is not None:
                hook(False)

    def _value(self, ref: ObjectRef):
        desc = self._objects[ref.id].desc
        try:
            return self.read_desc(desc, ref.id)
        except exc.ObjectLostError:
            # its node died while we read: when the object is being rebuilt from lineage
            # (its entry changed meanwhile), wait for the new copy instead of failing
            entry = self._objects.get(ref.id)
            if entry is None or entry.desc is desc:
                raise
            return self.get([ref])[0]

    def read_desc(self, desc: tuple, oid: bytes | None = None):
        kind = desc[0]
        if kind == "i":
            return ser.deserialize(desc[1], desc[2])
        if kind == "s":
            path = desc[2] if desc[1] == self.node_id else self._local_copy(desc[1], desc[2])
            try:
                meta, bufs = store.read(path)
            except FileNotFoundError:
                raise exc.ObjectLostError(
                    oid.hex() if oid else "", f"The object stored at {path} is gone (freed, "
                    "or its node died).") from None
            return ser.deserialize(meta, bufs)
        err = ser.deserialize(desc[1])
        if isinstance(err, exc.RayTaskError):
            raise err.as_instanceof_cause()
        raise err

    def _agent_addr(self, node_id: str) -> str | None:
        addr = self._node_addrs.get(node_id)
        if addr is None:
            info = self.request_head(P.CLUSTER_INFO, {})
            self._node_addrs = {n["node_id"]: n["addr"] for n in info["nodes"] if n["alive"]}
            addr = self._node_addrs.get(node_id)
        return addr

    def _local_copy(self, node_id: str, path: str) -> str:
        """The path of a copy of another node's object in this node's store, pulled there
        by this node's agent first if needed (one transfer however many readers ask)."""
        local = os.path.join(self.store_dir, os.path.basename(path))
        if os.path.exists(local):
            return local
        src, mine = self._agent_addr(node_id), self._agent_addr(self.node_id)
        if src is None or mine is None:
            raise exc.ObjectLostError("", f"The node {node_id} holding {path} is gone.")
        body = {"src_path": path, "src_addr": src}
        fut = self._new_request(body)
        self.outbox.send(mine, P.encode(P.PULL, body))
        try:  # the agent fails a pull whose source goes quiet (transfer.STALL_S)
            return fut.result(PULL_TIMEOUT_S)
        except FileNotFoundError as e:
            raise exc.ObjectLostError("", str(e)) from None
        except concurrent.futures.TimeoutError:
            raise exc.ObjectLostError("", f"Pulling {path} from node {node_id} did not "
                                      f"finish within {PULL_TIMEOUT_S:g}s.") from None
        finally:
            self._requests.pop(body["req_id"], None)

    def wait(self, refs: list[ObjectRef], num_returns: int, timeout: float | None):
        with self._lock:
            ready = []
            for r in refs:
                entry = self._entry_for(r)
                if entry.desc is not None:
                    ready.append(r)
                elif entry.owner is not None:
                    self._request_borrowed(r.id, entry)
            need = num_returns - len(ready)
            waiter = None
            if need > 0 and timeout != 0:
                waiter = _Waiter(need)
                for r in refs:
                    entry = self._objects[r.id]
                    if entry.desc is None:
                        entry.waiters.append(waiter)
        if waiter is not None:
            hook = self.blocked_hook
            if hook is not None:
                hook(True)
            try:
                waiter.wait(timeout)
            finally:
                if hook is not None:
                    hook(False)
            with self._lock:
                for r in refs:
                    entry = self._objects.get(r.id)
                    if entry is not None and waiter in entry.waiters:
                        entry.waiters.remove(waiter)
        with self._lock:
            ready_ids = {r.id for r in refs if self._objects[r.id].desc is not None}
        ready, not_ready = [], []
        for r in refs:
            (ready if r.id in ready_ids and len(ready) < num_returns else not_ready).append(r)
        return ready, not_ready

    def as_future(self, ref: ObjectRef) -> Future:
        fut: Future = Future()

        def done():
            try:
                fut.set_result(self._value(ref))
            except BaseException as e:
                fut.set_exception(e)

        with self._lock:
            entry = self._entry_for(ref)
            if entry.desc is None:
                entry.callbacks.append(lambda: self._resolve_future(ref, done))
                if entry.owner is not None:
                    self._request_borrowed(ref.id, entry)
                return fut
        done()
        return fut

    def _resolve_future(self, ref: ObjectRef, done) -> None:
        """Resolve a future made by ``as_future`` once its object is ready (IO thread,
        lock held). A small inline value or an error is read right here: a thread per
        result would cost more than the read (it made ``await ref`` slow under load);
        one that may need a transfer from another node is read on its own thread."""
        entry = self._objects.get(ref.id)
        if entry is not None and entry.desc is not None and entry.desc[0] != "s":
            done()
        else:
            threading.Thread(target=done, daemon=True).start()

    # ------------------------------------------------------------------ tasks
    def encode_args(self, args: tuple, kwargs: dict, hold: list | None = None):
        """Serialise arguments; top-level ObjectRefs become placeholders resolved later.
        Refs nested in the arguments go into ``hold`` (kept by the task until it is
        done, so the worker can register as their borrower first)."""
        if not args and not kwargs:
            return _NO_ARGS, ()
        deps = []
        if any(isinstance(a, ObjectRef) for a in args) or \
                any(isinstance(v, ObjectRef) for v in kwargs.values()):
            def sub(v):
                if isinstance(v, ObjectRef):
                    deps.append(v)
                    return _Dep(len(deps) - 1)
                return v
            args = tuple(sub(a) for a in args)
            kwargs = {k: sub(v) for k, v in kwargs.items()}
        if type(args) is tuple and ser._plain(args) and ser._plain(kwargs):
            return ("i", ser.pickle.dumps((args, kwargs), 5), []), deps
        return self._encode_value((args, kwargs), hold), deps

    def _encode_value(self, value, hold: list | None = None) -> tuple:
        """A descriptor for a value sent with a message (inline, or via the store)."""
        s = ser.serialize(value)
        if s.refs:
            if hold is not None:
                hold.extend(s.refs)
            else:
                with self._lock:
                    self._mark_escaped(s.refs)
        return self._make_desc(s, new_id())

    def submit_task(self, fn_id: bytes, fn_bytes: bytes, name: str, args, kwargs, *,
                    key: tuple, demand: dict, nret, max_retries: int, retry_exceptions,
                    lease_opts: dict):
        nested: list = []
        args_desc, deps = self.encode_args(args, kwargs, nested)
        t = _Task()
        t.task_id = tid = new_id()
        t.nested = nested
        t.key = key
        t.fn_id, t.fn_bytes, t.name = fn_id, fn_bytes, name
        t.deps = deps
        t.retries = max_retries
        t.retry_exc = retry_exceptions
        t.stream = nret == "streaming"
        t.nret = 1 if t.stream else nret
        t.body = {"task_id": tid, "fn_id": fn_id, "name": name, "args": args_desc,
                  "nret": t.nret, "stream": t.stream, "owner": self.addr,
                  "job_id": self.job_id, "resources": demand}
        if lease_opts.get("placement_group"):
            t.body["placement_group"] = lease_opts["placement_group"]
        if lease_opts.get("max_calls"):  # the worker exits after that many (not pipelined)
            t.body["max_calls"] = lease_opts["max_calls"]
        out = self._register_returns(t)
        with self._lock:
            if self._task_log_on:
                self._task_log[tid] = P.task_record(tid, name, self.job_id, None, time.time())
            if key not in self._queues:
                self._queues[key] = collections.deque()
                self._leases[key] = []
                self._lease_reqs[key] = {}
                self._lease_opts[key] = (demand, lease_opts)
                if lease_opts.get("strategy") == "SPREAD":
                    self._spread_keys.add(key)
            self._tasks[tid] = t
            self._await_deps(t, lambda: self._enqueue(t))
        return out

    def _register_returns(self, t: _Task):
        tid = t.task_id
        with self._lock:
            for i in range(t.nret):
                self._objects[return_id(tid, i)] = _Entry(None)
            if t.stream:
                self._streams[tid] = _Stream()
        if t.stream:
            return ObjectRefGenerator(tid, self.addr, self)
        refs = [ObjectRef(return_id(tid, i), self.addr, self) for i in range(t.nret)]
        return refs

    def _await_deps(self, t: _Task, then) -> None:
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

    def _dep_descs(self, t: _Task) -> list:
        return [self._objects[r.id].desc for r in t.deps]

    def _enqueue(self, t: _Task, front: bool = False) -> None:
        if t.cancelled:
            return
        q = self._queues[t.key]
        if front:
            q.appendleft(t)
        else:
            q.append(t)
        self._dispatch(t.key)

    def _dispatch(self, key) -> None:
        q = self._queues[key]
        leases = self._leases[key]
        # Pipelining (sending a task to a worker that is still busy) only behind tasks
        # known to be short, and only while the worker's current task is young: a long
        # task never holds up the ones behind it for long.
        pipeline = self._task_time.get(key, 1.0) < PIPELINE_MAX_TASK_S and \
            key not in self._spread_keys and not self._lease_opts[key][1].get("max_calls")
        now = time.monotonic()
        while q:
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
            if best is None:
                break
            self._send_task(best, q.popleft(), now)
        # ask for more workers while tasks wait, in the queue or pipelined behind others
        backlog = len(q) + sum(len(lease.inflight) - 1 for lease in leases if lease.inflight)
        reqs = self._lease_reqs[key]
        if backlog:
            want = min(backlog, MAX_LEASE_REQUESTS)
            while len(reqs) < want:
                self._request_lease(key)
        elif reqs:
            for req_id in list(reqs):
                self.send_head(P.CANCEL_LEASE, {"req_id": req_id})
            reqs.clear()

    def _send_task(self, lease: _Lease, t: _Task, now: float) -> None:
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
            rec = self._task_record(t.task_id)
            rec[P.TR_SENT], rec[P.TR_NODE_ID], rec[P.TR_WORKER_ID] = \
                time.time(), lease.node_id, lease.worker_id
        self.outbox.send(lease.addr, P.encode(P.EXECUTE, body))

    def flush_task_events(self) -> None:
        """Send the task records gathered since the last batch to the head now."""
        with self._lock:
            records, self._task_log = list(self._task_log.values()), {}
        if records:
            self.send_head(P.TASK_EVENTS, {"records": records})

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
                                                     "backlog": n})

    def _task_record(self, tid: bytes) -> list:
        rec = self._task_log.get(tid)
        if rec is None:  # its earlier part went to the head already
            rec = self._task_log[tid] = P.task_record(tid)
        return rec

    def _log_retry(self, t) -> None:
        t.attempts += 1
        if self._task_log_on:
            self._task_record(t.task_id)[P.TR_ATTEMPTS] = t.attempts

    def _log_done(self, tid: bytes, body: dict) -> None:
        rec = self._task_record(tid)
        rec[P.TR_START], rec[P.TR_END] = body.get("t0"), body.get("t1") or time.time()
        if body.get("error") is not None:
            rec[P.TR_ERROR] = body.get("error_msg") or "error"

    def _request_lease(self, key) -> None:
        demand, opts = self._lease_opts[key]
        body = {"demand": demand, "owner": self.addr, "job_id": self.job_id,
                "node_id": self.node_id, "backlog": len(self._queues[key]), **opts}
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
            lease = _Lease(body, key)
            self._leases[key].append(lease)
            self._lease_by_worker[lease.worker_id] = lease
            if not self._queues[key]:  # work waits behind busy workers: move it here
                busiest = max(self._leases[key], key=lambda le: len(le.inflight))
                if len(busiest.inflight) > 1:
                    self._steal(busiest)
            self._dispatch(key)

    def _return_lease(self, lease: _Lease) -> None:
        self._leases[lease.key].remove(lease)
        self._lease_by_worker.pop(lease.worker_id, None)
        self.send_head(P.RETURN_LEASE, {"worker_id": lease.worker_id})

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
            lease = t.lease
            if lease is not None:
                lease.inflight.pop(tid, None)
                lease.exiting = lease.exiting or bool(body.get("exiting"))
                now = time.monotonic()
                avg = self._task_time.get(t.key)
                took = now - t.sent
                self._task_time[t.key] = took if avg is None else 0.8 * avg + 0.2 * took
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

    def _should_retry(self, t: _Task, body) -> bool:
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

    def _finish(self, t: _Task, body) -> None:
        """Record a finished task's results (lock held)."""
        tid = t.task_id
        err = body.get("error")
        if t.stream:
            st = self._streams.get(tid)
            if st is not None:
                end = body.get("count", st.received)
                if err is not None:
                    self._add_stream_item(tid, end, err)
                    end += 1
                st.end = end
                self._wake_stream(st)
            self._set_ready(return_id(tid, 0), ("i", ser.serialize(None).meta, []))
            return
        if err is not None:
            for i in range(t.nret):
                self._set_ready(return_id(tid, i), err)
            return
        for i, desc in enumerate(body["results"]):
            self._set_ready(return_id(tid, i), desc)

    def _fail(self, t: _Task, error: BaseException) -> None:
        if self._task_log_on:  # the state API sees it end (cancelled, actor died, ...)
            rec = self._task_record(t.task_id)
            rec[P.TR_END] = time.time()
            rec[P.TR_ERROR] = f"{type(error).__name__}: {error}"[:300]
        self._finish(t, {"error": ser.error_descriptor(error)})

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

    def _steal(self, lease: _Lease) -> None:
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

    # ------------------------------------------------------------------ streams
    def _on_stream_item(self, body, _bufs) -> None:
        with self._lock:
            tid = body["task_id"]
            if tid in self._tasks:
                self._add_stream_item(tid, body["index"], body["desc"])

    def _add_stream_item(self, tid: bytes, index: int, desc: tuple) -> None:
        oid = return_id(tid, index + 1)
        entry = self._objects.get(oid)
        if entry is None:
            entry = self._objects[oid] = _Entry(None)
        entry.refs += 1  # held until next_stream_item hands the ref out
        self._set_ready(oid, desc)
        st = self._streams.get(tid)
        if st is not None:
            st.received = max(st.received, index + 1)
            self._wake_stream(st)

    @staticmethod
    def _wake_stream(st: _Stream) -> None:
        for ev in st.waiters:
            ev.set()
        st.waiters = []

    def next_stream_item(self, tid: bytes, index: int, timeout=None):
        while True:
            with self._lock:
                st = self._streams[tid]
                if index < st.received:
                    oid = return_id(tid, index + 1)
                    ref = ObjectRef(oid, self.addr, self)
                    self._releases.append(oid)  # drop the hold taken on arrival
                    return ref
                if st.end is not None and index >= st.end:
                    return None
                ev = threading.Event()
                st.waiters.append(ev)
            if not ev.wait(timeout):
                raise exc.GetTimeoutError("no next item from the streaming task")

    # ------------------------------------------------------------------ cancel
    def cancel(self, ref: ObjectRef, force: bool) -> None:
        tid = ref.id[:16]
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
        self.outbox.send(core_addr, P.encode(P.CANCEL, {"task_id": tid, "force": force,
                                                         "reply_to": self.addr}))

    def _on_cancel(self, body, _bufs) -> None:
        if self.cancel_hook is not None:
            self.cancel_hook(body["task_id"], body["force"], body["reply_to"])

    # ------------------------------------------------------------------ actors
    def create_actor(self, spec: dict, args, kwargs, max_task_retries: int):
        """Ask the head to create an actor; named actors wait for the head's answer."""
        args_desc = self._encode_value((args, kwargs))
        actor_id = new_id()
        spec = dict(spec, actor_id=actor_id, args=args_desc, owner=self.addr,
                    job_id=self.job_id)
        with self._lock:
            self._actors[actor_id] = _Actor(actor_id, max_task_retries, spec.get("name", ""))
            if not spec.get("name") and spec.get("lifetime") != "detached":
                # its handles are counted under this key; when none is left, it ends
                entry = self._objects[b"A" + actor_id] = _Entry(None)
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
        nested: list = []
        args_desc, deps = self.encode_args(args, kwargs, nested)
        t = _Task()
        t.task_id = tid = new_id()
        t.nested = nested
        t.actor_id = actor_id
        t.key = None
        t.deps = deps
        t.name = method
        t.retries = max_task_retries
        t.stream = nret == "streaming"
        t.nret = 1 if t.stream else nret
        t.body = {"task_id": tid, "method": method, "args": args_desc, "nret": t.nret,
                  "stream": t.stream, "owner": self.addr}
        if group is not None:
            t.body["group"] = group  # the actor's concurrency group that runs it
        out = self._register_returns(t)
        with self._lock:
            if max_pending > 0:
                self._check_pending_calls(t, max_pending)
            if self._task_log_on:
                self._task_log[tid] = P.task_record(tid, method, self.job_id, actor_id,
                                                    time.time())
            a = self._actors.get(actor_id)
            if a is None:
                a = self._actors[actor_id] = _Actor(actor_id, max_task_retries)
            self._tasks[tid] = t
            if a.state == "DEAD":
                self._tasks.pop(tid, None)
                self._fail(t, self._actor_error(a))
                return out
            a.queue.append(t)
            self._await_deps(t, lambda: self._pump_actor(a))
        return out

    def _check_pending_calls(self, t: _Task, limit: int) -> None:
        """Refuse a call while ``limit`` calls from here to its actor are unfinished
        (max_pending_calls, as Ray); the refused call leaves nothing behind (lock held)."""
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

    def _actor_error(self, a: _Actor) -> BaseException:
        if isinstance(a.error, BaseException):
            return a.error
        return exc.ActorDiedError(
            f"The actor {a.name or a.actor_id.hex()} died: {a.error or 'its process exited'}.",
            a.actor_id.hex())

    def _pump_actor(self, a: _Actor) -> None:
        """Send queued calls in order while the actor is alive and args are ready."""
        if a.state != "ALIVE":
            if not a.asked:
                a.asked = True
                self._new_request_actor_info(a)
            return
        while a.queue and a.queue[0].pending == 0:
            t = a.queue.popleft()
            if t.cancelled:
                continue
            body = t.body
            if t.deps:
                body = dict(body, deps=self._dep_descs(t))
            t.lease = a
            a.inflight[t.task_id] = t
            if self._task_log_on:
                rec = self._task_record(t.task_id)
                rec[P.TR_SENT], rec[P.TR_NODE_ID], rec[P.TR_WORKER_ID] = \
                    time.time(), a.node_id, a.worker_id
            self.outbox.send(a.addr, P.encode(P.ACTOR_CALL, body))

    def _new_request_actor_info(self, a: _Actor) -> None:
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

    def _apply_actor_state(self, a: _Actor, info: dict) -> None:
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

    def _actor_task_done(self, t: _Task, body) -> None:
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

    def _on_owner_died(self, body, _bufs) -> None:
        dead = body["core_addr"]
        with self._lock:
            self._dead_owners.add(dead)
            for oid, entry in list(self._objects.items()):
                if entry.owner == dead and entry.desc is None and entry.requested:
                    self._set_ready(oid, ser.error_descriptor(exc.OwnerDiedError(
                        oid.hex(), f"The owner of object {oid.hex()} ({dead}) died.")))
                elif entry.borrowers and dead in entry.borrowers:  # a borrower died
                    entry.borrowers.discard(dead)
                    self._maybe_free(oid, entry)
        self.outbox.forget(dead)

    def _on_log(self, body, _bufs) -> None:
        if self.log_hook is not None:
            self.log_hook(body["lines"])

    def _on_ping(self, body, _bufs) -> None:
        fut = self._requests.pop(body["nonce"], None)
        if fut is not None:
            fut.set_result(True)

    def sync_events(self, timeout: float = 10.0) -> None:
        """Wait until the head's event stream reaches us (a SUB socket misses whatever is
        published before its connection completes: ZeroMQ's "slow joiner")."""
        nonce = new_id()
        fut: Future = Future()
        self._requests[nonce] = fut
        deadline = time.monotonic() + timeout
        while not fut.done() and time.monotonic() < deadline:
            self.send_head(P.PING_EVENTS, {"nonce": nonce})
            try:
                fut.result(0.02)
            except TimeoutError:
                pass
        self._requests.pop(nonce, None)

    @property
    def _event_handlers(self):
        return {P.EV_ACTOR: self._on_actor_event, P.EV_OWNER_DIED: self._on_owner_died,
                P.EV_LOG: self._on_log, P.EV_NODE: self._on_node_event, P.EV_PING: self._on_ping}

    def _on_node_event(self, body, _bufs) -> None:
        """A node died: objects we own that lived only in its store are lost. Rebuild
        those a retryable task produced by running it again (lineage reconstruction, as
        Ray does); the rest raise ObjectLostError when read."""
        if body["alive"]:
            return
        dead = body["node_id"]
        with self._lock:
            rerun: dict[bytes, _Task] = {}
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

    def kill_actor(self, actor_id: bytes, no_restart: bool) -> None:
        self.send_head(P.KILL_ACTOR, {"actor_id": actor_id, "no_restart": no_restart})
        if no_restart:  # calls made from here on fail at once, not after the head's news
            with self._lock:
                a = self._actors.get(actor_id)
                if a is None:
                    a = self._actors[actor_id] = _Actor(actor_id)
                self._apply_actor_state(a, {"state": "DEAD", "error": exc.ActorDiedError(
                    f"The actor {a.name or actor_id.hex()} was killed with raylite.kill.",
                    actor_id.hex())})

    # ------------------------------------------------------------------ lifecycle
    def shutdown(self) -> None:
        self._stop = True
        self.outbox.send(self.addr, P.encode(P.WAKE, {}))
        self._io.join(timeout=1.0)
        with self._lock:
            for leases in self._leases.values():
                for lease in leases:
                    self.send_head(P.RETURN_LEASE, {"worker_id": lease.worker_id})
        store.release_maps()
        self.outbox.close(linger_ms=500)  # only waits while messages are still unsent
        self.inbox.close(linger=0)
        self.sub.close(linger=0)
        self.transport.close(linger_ms=500)


def print_worker_lines(lines: list[str]) -> None:
    out = sys.stdout
    try:
        out.write("".join(line if line.endswith("\n") else line + "\n" for line in lines))
        out.flush()
    except Exception:
        pass
