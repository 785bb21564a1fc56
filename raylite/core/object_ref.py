"""ObjectRef: a reference to a value owned by one process, and streaming generators."""

from __future__ import annotations

import itertools
import os

from raylite.core import serialization

# Ids: 8 random bytes per process + a counter. A task's return objects are task_id + index.
_PREFIX = os.urandom(8)
_counter = itertools.count(1)


def new_id() -> bytes:
    return _PREFIX + next(_counter).to_bytes(8, "little")


def reset_id_prefix() -> None:
    """Give a forked child its own id space."""
    global _PREFIX
    _PREFIX = os.urandom(8)


def return_id(task_id: bytes, index: int) -> bytes:
    return task_id + index.to_bytes(4, "little")


def _core():
    from raylite.core import runtime

    return runtime.core


class ObjectRef:
    """A reference to an object in the cluster (Ray: ``ray.ObjectRef``).

    The process that created the object (its *owner*) keeps its value or location; other
    processes holding the ref ask the owner. ``await ref`` works in async code.
    """

    __slots__ = ("id", "owner", "_core", "__weakref__")

    def __init__(self, oid: bytes, owner: str, core=None, add_ref: bool = True):
        self.id = oid
        self.owner = owner
        self._core = core
        if core is not None and add_ref:
            core.add_local_ref(oid, owner)

    def hex(self) -> str:
        return self.id.hex()

    def task_id(self) -> str:
        return self.id[:16].hex()

    def __repr__(self) -> str:
        return f"ObjectRef({self.id.hex()})"

    def __hash__(self) -> int:
        return hash(self.id)

    def __eq__(self, other) -> bool:
        return isinstance(other, ObjectRef) and other.id == self.id

    def __reduce__(self):
        serialization.note_ref_serialized(self)
        return (_rebuild_ref, (self.id, self.owner))

    def __del__(self):
        core = self._core
        if core is not None:
            try:
                core.remove_local_ref(self.id)
            except Exception:
                pass

    def future(self):
        """A concurrent.futures.Future resolved with the value. Its done-callbacks may run
        on raylite's IO thread (for small values), so they must be quick and not block
        (no ``get`` in them); hand longer work to another thread."""
        return self._core.as_future(self)

    def __await__(self):
        import asyncio

        return asyncio.wrap_future(self.future()).__await__()


WAIT = object()  # next_stream_item_nowait: not there yet, the waiter will be set


class _LoopWake:
    """A stream waiter for an event loop: ``set()`` (from the IO thread) resolves
    ``future`` on the loop that made it."""

    __slots__ = ("loop", "future")

    def __init__(self):
        import asyncio

        self.loop = asyncio.get_running_loop()
        self.future = self.loop.create_future()

    def set(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self._done)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    def _done(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


def _rebuild_ref(oid: bytes, owner: str) -> ObjectRef:
    return ObjectRef(oid, owner, _core())


class ObjectRefGenerator:
    """The result of a ``num_returns="streaming"`` task: yields an ObjectRef per value as
    the task produces it (Ray: ``ObjectRefGenerator``). Iterate it (or ``async for``);
    an error raised by the task is raised by ``get`` of the ref at which it happened."""

    def __init__(self, task_id: bytes, owner: str, core):
        self._task_id = task_id
        self._owner = owner
        self._core = core
        self._index = 0

    def __iter__(self):
        return self

    def __next__(self) -> ObjectRef:
        ref = self._core.next_stream_item(self._task_id, self._index, timeout=None)
        if ref is None:
            raise StopIteration
        self._index += 1
        return ref

    def __aiter__(self):
        return self

    async def __anext__(self) -> ObjectRef:
        while True:  # no thread: the IO thread wakes this loop when the item arrives
            wake = _LoopWake()
            ref = self._core.next_stream_item_nowait(self._task_id, self._index, wake)
            if ref is not WAIT:
                break
            await wake.future
        if ref is None:
            raise StopAsyncIteration
        self._index += 1
        return ref

    def completed(self) -> ObjectRef:
        """A ref that is ready when the generator task has finished."""
        return ObjectRef(return_id(self._task_id, 0), self._owner, self._core)

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._task_id.hex()})"
