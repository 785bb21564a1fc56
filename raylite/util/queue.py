"""A first-in, first-out queue that tasks and actors share (Ray: ``ray.util.queue``).

The items live in an async actor (an ``asyncio.Queue``); a :class:`Queue` object is a
handle to it, so it can be passed to tasks and actors, and every holder sees the same
queue. Blocking ``put``/``get`` wait in the actor, so a blocked caller costs no polling.
Built only on the public core API.
"""

from __future__ import annotations

import asyncio
import functools
import queue as _stdlib_queue
from collections.abc import Iterable

import raylite

__all__ = ["Queue", "Empty", "Full"]


class Empty(_stdlib_queue.Empty):
    """Raised by ``get`` with nothing to take (non-blocking, or timed out)."""


class Full(_stdlib_queue.Full):
    """Raised by ``put`` with no room (non-blocking, or timed out)."""


class _QueueActor:
    """Holds the items. Answers are ``(ok, value)`` pairs rather than raised errors, so
    an empty or full queue costs no remote traceback."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self.queue: asyncio.Queue = asyncio.Queue(maxsize)

    def qsize(self) -> int:
        return self.queue.qsize()

    def empty(self) -> bool:
        return self.queue.empty()

    def full(self) -> bool:
        return self.queue.full()

    async def put(self, item, timeout: float | None = None):
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except asyncio.TimeoutError:
            return False, f"no room in the queue within {timeout} s"
        return True, None

    async def get(self, timeout: float | None = None):
        try:
            return True, await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return False, f"nothing in the queue within {timeout} s"

    def put_nowait(self, item):
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            return False, f"the queue is full (maxsize={self.maxsize})"
        return True, None

    def put_nowait_batch(self, items: list):
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            return False, (f"Cannot add {len(items)} items to queue of size "
                           f"{self.queue.qsize()} and maxsize {self.maxsize}.")
        for item in items:
            self.queue.put_nowait(item)
        return True, None

    def get_nowait(self):
        try:
            return True, self.queue.get_nowait()
        except asyncio.QueueEmpty:
            return False, "the queue is empty"

    def get_nowait_batch(self, num_items: int):
        if num_items > self.queue.qsize():
            return False, (f"Cannot get {num_items} items from queue of size "
                           f"{self.queue.qsize()}.")
        return True, [self.queue.get_nowait() for _ in range(num_items)]


@functools.cache
def _actor_class():
    """The actor class, made once per process (its code is pickled once)."""
    return raylite.remote(_QueueActor)


def _check_timeout(timeout) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


def _unwrap(answer, error: type):
    ok, value = answer
    if not ok:
        raise error(value)
    return value


class Queue:
    """A FIFO queue shared by the driver, tasks and actors (as Ray's).

    ``maxsize <= 0`` means unbounded. ``put``/``get`` block by default (``timeout``
    seconds at most, then ``Full``/``Empty``); ``block=False`` (or the ``*_nowait``
    forms) raise at once. ``actor_options`` are ``.options()`` of the actor that holds
    the items (e.g. ``{"num_cpus": 0}``, a ``scheduling_strategy``). Items put as
    ObjectRefs are stored as their values, as in Ray. Differences from Ray:
    ``hint_ip`` is not supported (use ``actor_options`` with a
    ``NodeAffinitySchedulingStrategy``); ``Empty``/``Full`` from a remote queue are
    raised plain, not wrapped in a task error.
    """

    def __init__(self, maxsize: int = 0, actor_options: dict | None = None):
        self.maxsize = maxsize
        self.actor = _actor_class().options(**(actor_options or {})).remote(maxsize)

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """The number of items in the queue."""
        return raylite.get(self.actor.qsize.remote())

    def qsize(self) -> int:
        """The number of items in the queue (as ``size``)."""
        return self.size()

    def empty(self) -> bool:
        return raylite.get(self.actor.empty.remote())

    def full(self) -> bool:
        return raylite.get(self.actor.full.remote())

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        """Add an item, waiting for room if the queue is full (up to ``timeout`` s)."""
        if not block:
            return _unwrap(raylite.get(self.actor.put_nowait.remote(item)), Full)
        _check_timeout(timeout)
        _unwrap(raylite.get(self.actor.put.remote(item, timeout)), Full)

    async def put_async(self, item, block: bool = True, timeout: float | None = None) -> None:
        """``put`` for async code: awaits instead of blocking the event loop."""
        if not block:
            return _unwrap(await self.actor.put_nowait.remote(item), Full)
        _check_timeout(timeout)
        _unwrap(await self.actor.put.remote(item, timeout), Full)

    def get(self, block: bool = True, timeout: float | None = None):
        """Remove and return the oldest item, waiting for one (up to ``timeout`` s)."""
        if not block:
            return _unwrap(raylite.get(self.actor.get_nowait.remote()), Empty)
        _check_timeout(timeout)
        return _unwrap(raylite.get(self.actor.get.remote(timeout)), Empty)

    async def get_async(self, block: bool = True, timeout: float | None = None):
        """``get`` for async code: awaits instead of blocking the event loop."""
        if not block:
            return _unwrap(await self.actor.get_nowait.remote(), Empty)
        _check_timeout(timeout)
        return _unwrap(await self.actor.get.remote(timeout), Empty)

    def put_nowait(self, item) -> None:
        """Add an item now, or raise ``Full``."""
        return self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable) -> None:
        """Add all ``items`` now, or none of them (``Full`` if they do not all fit)."""
        if not isinstance(items, Iterable):
            raise TypeError("Argument 'items' must be an Iterable")
        _unwrap(raylite.get(self.actor.put_nowait_batch.remote(list(items))), Full)

    def get_nowait(self):
        """Take an item now, or raise ``Empty``."""
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list:
        """Take ``num_items`` items now, or none (``Empty`` if there are fewer)."""
        if not isinstance(num_items, int):
            raise TypeError("Argument 'num_items' must be an int")
        if num_items < 0:
            raise ValueError("'num_items' must be nonnegative")
        return _unwrap(raylite.get(self.actor.get_nowait_batch.remote(num_items)), Empty)

    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        """End the queue's actor: at once with ``force``, else after the calls made to
        it so far (killed if that takes longer than ``grace_period_s``)."""
        if self.actor is None:
            return
        if force:
            raylite.kill(self.actor, no_restart=True)
        else:
            done = self.actor.__ray_terminate__.remote()
            ready, _ = raylite.wait([done], timeout=grace_period_s)
            if not ready:
                raylite.kill(self.actor, no_restart=True)
        self.actor = None
