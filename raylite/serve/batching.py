"""``@serve.batch``: callers pass one item each; the method runs on a list of them.

A batch is formed as SPEC.md (and Ray 2.53's ``batch_size_fn``) describes: take the first
queued item (if it alone is larger than ``max_batch_size``, only its caller gets an
error); add the queued items one by one while the batch's size stays within the max; an
item that would overflow it waits for the next batch (and closes this one, which cannot
grow past it in order); a batch also closes when full or ``batch_wait_timeout_s`` after
its first item. The size of a list of items is ``batch_size_fn(items)``, ``len`` by
default, so items can weigh more than one (e.g. their token counts).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import time
from collections.abc import Callable, Sequence


def form_batch(items: Sequence, max_batch_size: int,
               size_fn: Callable[[list], int] = len) -> tuple[int, bool]:
    """How many of the queued ``items`` (in order) make the next batch, and whether the
    batch is closed (full, or the next item would overflow it). Returns ``(0, True)`` when
    the first item alone exceeds ``max_batch_size``."""
    if not items:
        return 0, False
    if size_fn([items[0]]) > max_batch_size:
        return 0, True
    n = 1
    while n < len(items):
        size = size_fn(list(items[:n + 1]))
        if size > max_batch_size:
            return n, True
        n += 1
    return n, size_fn(list(items[:n])) >= max_batch_size


class _Item:
    __slots__ = ("value", "future")

    def __init__(self, value, future):
        self.value = value
        self.future = future


class _BatchQueue:
    """The queue and batching loop of one batched method (per instance, per event loop)."""

    def __init__(self, fn, max_batch_size, timeout_s, max_concurrent, size_fn):
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.timeout_s = timeout_s
        self.size_fn = size_fn or len
        self.pending: collections.deque[_Item] = collections.deque()
        self.arrived = asyncio.Event()
        self.slots = asyncio.Semaphore(max_concurrent)
        self.task = asyncio.get_running_loop().create_task(self._loop())

    def put(self, value) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.pending.append(_Item(value, fut))
        self.arrived.set()
        return fut

    async def _wait_for_items(self, timeout: float | None) -> None:
        self.arrived.clear()
        try:
            await asyncio.wait_for(self.arrived.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def _next_batch(self) -> list[_Item]:
        while True:
            while not self.pending:
                await self._wait_for_items(None)
            first = self.pending[0]
            if self.size_fn([first.value]) > self.max_batch_size:
                self.pending.popleft()
                if not first.future.done():
                    first.future.set_exception(ValueError(
                        f"This request's batch size ({self.size_fn([first.value])}) exceeds "
                        f"max_batch_size={self.max_batch_size}; it can never be batched."))
                continue
            break
        deadline = time.monotonic() + self.timeout_s
        while True:
            items = [it.value for it in self.pending]
            n, closed = form_batch(items, self.max_batch_size, self.size_fn)
            left = deadline - time.monotonic()
            if closed or left <= 0:
                return [self.pending.popleft() for _ in range(n)]
            await self._wait_for_items(left)

    async def _loop(self) -> None:
        while True:
            batch = await self._next_batch()
            batch = [it for it in batch if not it.future.done()]  # cancelled callers
            if not batch:
                continue
            await self.slots.acquire()
            asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[_Item]) -> None:
        try:
            results = await self.fn([it.value for it in batch])
            if not isinstance(results, (list, tuple)) or len(results) != len(batch):
                raise TypeError(
                    f"A @serve.batch function must return a list as long as its input "
                    f"({len(batch)} items), got {type(results).__name__}"
                    + (f" of length {len(results)}" if hasattr(results, "__len__") else ""))
            for it, r in zip(batch, results, strict=True):
                if not it.future.done():
                    it.future.set_result(r)
        except BaseException as e:  # noqa: BLE001 - every caller of the batch gets it
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(e)
        finally:
            self.slots.release()


def batch(_func=None, *, max_batch_size: int = 10, batch_wait_timeout_s: float = 0.01,
          max_concurrent_batches: int = 1, batch_size_fn: Callable[[list], int] | None = None):
    """Batch calls to an async method (or function) that takes and returns a list.

    ``await self.method(item)`` queues ``item``; the method runs on batches formed as the
    module docstring says and each caller gets its own element of the returned list.
    Several positional arguments are batched position by position (each becomes a list).
    Differs from Ray: generator (streaming) batch functions are not supported.
    """
    if max_batch_size < 1:
        raise ValueError("max_batch_size must be >= 1")
    if batch_wait_timeout_s < 0:
        raise ValueError("batch_wait_timeout_s must be >= 0")
    if max_concurrent_batches < 1:
        raise ValueError("max_concurrent_batches must be >= 1")
    if batch_size_fn is not None and not callable(batch_size_fn):
        raise TypeError("batch_size_fn must be callable: list of items -> int")

    def wrap(fn):
        if not inspect.iscoroutinefunction(fn):
            raise TypeError("@serve.batch needs an async function (async def)")
        params = list(inspect.signature(fn).parameters)
        is_method = bool(params) and params[0] == "self"
        attr = f"__serve_batch_queue_{fn.__name__}"
        module_queues: dict = {}

        def queue_for(owner) -> _BatchQueue:
            loop = asyncio.get_running_loop()
            store = owner.__dict__ if owner is not None else module_queues
            key = (attr, id(loop))
            q = store.get(key)
            if q is None:
                if owner is not None:
                    async def call(values, _owner=owner):
                        return await _call_batched(fn, _owner, values)
                else:
                    async def call(values):
                        return await _call_batched(fn, None, values)
                q = store[key] = _BatchQueue(call, max_batch_size, batch_wait_timeout_s,
                                             max_concurrent_batches, batch_size_fn)
            return q

        @functools.wraps(fn)
        async def wrapper(*args, **kwargs):
            if kwargs:
                raise TypeError("@serve.batch methods take positional arguments only")
            owner, args = (args[0], args[1:]) if is_method else (None, args)
            if len(args) == 0:
                raise TypeError("@serve.batch methods take at least one argument")
            value = args[0] if len(args) == 1 else _Multi(args)
            return await queue_for(owner).put(value)

        wrapper._serve_batch = True
        return wrapper

    return wrap(_func) if _func is not None else wrap


class _Multi(tuple):
    """The arguments of one call of a multi-argument batched method."""


async def _call_batched(fn, owner, values: list):
    if values and isinstance(values[0], _Multi):
        columns = [list(col) for col in zip(*values, strict=True)]
    else:
        columns = [values]
    return await (fn(owner, *columns) if owner is not None else fn(*columns))
