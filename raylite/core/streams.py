"""Streaming returns (``num_returns="streaming"``): items arrive one STREAM_ITEM at a
time and are handed out in order by ``next_stream_item`` (what an ObjectRefGenerator
calls).

Item ``i`` of task ``t`` is the object ``return_id(t, i + 1)``; ``return_id(t, 0)`` is
ready when the task has ended. An item holds one local ref from its arrival until it is
handed out, so it is not freed before the generator reaches it. An error raised by the
generator becomes the item after the last one it yielded. Part of the CoreWorker
(``self`` is it); lock held where not said otherwise.
"""

from __future__ import annotations

import threading

from raylite import exceptions as exc
from raylite.core import serialization as ser
from raylite.core.object_ref import WAIT, ObjectRef, return_id
from raylite.core.reference_table import Entry


class Stream:
    __slots__ = ("received", "end", "waiters")

    def __init__(self):
        self.received = 0
        self.end = None
        self.waiters = []


class StreamsPart:
    """The owner's side of streaming tasks (``self`` is the CoreWorker)."""

    def _init_streams(self) -> None:
        self._streams: dict[bytes, Stream] = {}

    def _on_stream_item(self, body, _bufs) -> None:
        with self._lock:
            tid = body["task_id"]
            if tid in self._tasks:
                self._add_stream_item(tid, body["index"], body["desc"])

    def _add_stream_item(self, tid: bytes, index: int, desc: tuple) -> None:
        oid = return_id(tid, index + 1)
        entry = self._objects.get(oid)
        if entry is None:
            entry = self._objects[oid] = Entry(None)
        entry.refs += 1  # held until next_stream_item hands the ref out
        self._set_ready(oid, desc)
        st = self._streams.get(tid)
        if st is not None:
            st.received = max(st.received, index + 1)
            self._wake_stream(st)

    def _end_stream(self, tid: bytes, body: dict) -> None:
        """The streaming task ended: no more items after ``count`` (plus its error)."""
        err = body.get("error")
        st = self._streams.get(tid)
        if st is not None:
            end = body.get("count", st.received)
            if err is not None:
                self._add_stream_item(tid, end, err)
                end += 1
            st.end = end
            self._wake_stream(st)
        self._set_ready(return_id(tid, 0), ("i", ser.serialize(None).meta, []))

    @staticmethod
    def _wake_stream(st: Stream) -> None:
        for ev in st.waiters:
            ev.set()
        st.waiters = []

    def next_stream_item_nowait(self, tid: bytes, index: int, waiter):
        """``next_stream_item`` without blocking: the ref, None after the last, or
        ``WAIT`` after adding ``waiter`` (an object whose ``set()`` the IO thread calls
        once item ``index`` or the end has arrived; it must not block)."""
        with self._lock:
            st = self._streams[tid]
            if index < st.received:
                oid = return_id(tid, index + 1)
                self._releases.append(oid)  # drop the hold taken on arrival
                return ObjectRef(oid, self.addr, self)
            if st.end is not None and index >= st.end:
                return None
            st.waiters.append(waiter)
            return WAIT

    def next_stream_item(self, tid: bytes, index: int, timeout=None):
        """The ref of item ``index`` once it arrived, or None after the last (any
        thread; blocks without the lock)."""
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
