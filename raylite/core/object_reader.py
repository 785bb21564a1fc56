"""Object values in and out: ``put``, ``get``, ``wait``, futures, and pulls of values
stored on other nodes.

A value is held as a *descriptor*: ``("i", meta, buffers)`` inline (small values travel
in the message), ``("s", node_id, path, size)`` in a node's shared-memory store, ``("e",
pickled error)``, or ``("actor", actor_id)`` for an actor's handle count. Reading an
``"s"`` descriptor of another node asks this node's agent to pull a copy first (one
transfer however many readers ask). A blocked ``get``/``wait`` waits on a
:class:`Waiter`; ``as_future`` resolves on the IO thread. Part of the CoreWorker
(``self`` is it), over the reference table's entries.
"""

from __future__ import annotations

import _thread
import concurrent.futures
import os
import threading
from concurrent.futures import Future

from raylite import exceptions as exc
from raylite.core import protocol as P
from raylite.core import serialization as ser
from raylite.core import store
from raylite.core.object_ref import ObjectRef, new_id
from raylite.core.reference_table import Entry

PULL_TIMEOUT_S = 120.0       # a backstop: the agent fails a stalled pull much sooner


class Waiter:
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


class ObjectsPart:
    """put/get/wait/futures and pulls (``self`` is the CoreWorker)."""

    def _init_objects(self) -> None:
        self._node_addrs: dict[str, str] = {}

    # ------------------------------------------------------------------ values in
    def put(self, value) -> ObjectRef:
        if self._releases:  # free what was dropped first: its file can take this value
            self._process_releases()
        s = ser.serialize(value)
        oid = new_id()
        desc = self._make_desc(s, oid)
        with self._lock:
            entry = self._objects[oid] = Entry(None)
            entry.desc = desc
            if s.refs:  # refs inside live as long as this object (Ray: "contained in")
                entry.nested = s.refs
        return ObjectRef(oid, self.addr, self)

    def describe(self, value, oid: bytes | None = None, hold: list | None = None) -> tuple:
        """A descriptor for a value sent with a message (inline, or via the store under
        ``oid``). Refs inside go into ``hold`` when given, else they are marked escaped
        (their objects stay until the receiver lets go)."""
        s = ser.serialize(value)
        if s.refs:
            if hold is not None:
                hold.extend(s.refs)
            else:
                with self._lock:
                    self._mark_escaped(s.refs)
        return self._make_desc(s, new_id() if oid is None else oid)

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

    # ------------------------------------------------------------------ values out
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
                waiter = Waiter(pending)
                for r in refs:
                    entry = self._objects[r.id]
                    if entry.desc is None:
                        entry.waiters.append(waiter)
        if waiter is not None and waiter.remaining > 0:
            self._block_until(waiter, timeout)
        return [self._value(r) for r in refs]

    def _block_until(self, waiter: Waiter, timeout: float | None) -> None:
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
            path = desc[2] if desc[1] == self.node_id else self.local_copy(desc[1], desc[2])
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

    # ------------------------------------------------------------------ pulls
    def _agent_addr(self, node_id: str) -> str | None:
        addr = self._node_addrs.get(node_id)
        if addr is None:
            info = self.request_head(P.CLUSTER_INFO, {})
            self._node_addrs = {n["node_id"]: n["addr"] for n in info["nodes"] if n["alive"]}
            addr = self._node_addrs.get(node_id)
        return addr

    def local_copy(self, node_id: str, path: str) -> str:
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

    # ------------------------------------------------------------------ wait, futures
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
                waiter = Waiter(need)
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
        ready_ids = set(self.ready_descs(refs))
        ready, not_ready = [], []
        for r in refs:
            (ready if r.id in ready_ids and len(ready) < num_returns else not_ready).append(r)
        return ready, not_ready

    def ready_descs(self, refs: list[ObjectRef]) -> dict[bytes, tuple]:
        """The descriptors of those of ``refs`` (known here) that have a value."""
        with self._lock:
            objects = self._objects
            return {r.id: objects[r.id].desc for r in refs if objects[r.id].desc is not None}

    def watch(self, refs: list[ObjectRef], arrived) -> object:
        """Call ``arrived(oid, desc)`` for each ref once it has a value (now, or later on
        the IO thread; lock held, so it must not block). Returns a function that stops
        the watch."""
        hooks = []
        with self._lock:
            for r in refs:
                entry = self._objects[r.id]
                if entry.desc is not None:
                    arrived(r.id, entry.desc)
                    continue

                def cb(oid=r.id, e=entry):
                    arrived(oid, e.desc)
                entry.callbacks.append(cb)
                hooks.append((entry, cb))

        def unwatch() -> None:
            with self._lock:
                for entry, cb in hooks:
                    if cb in entry.callbacks:
                        entry.callbacks.remove(cb)
        return unwatch

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
