"""A pool of actors that work through a stream of values (Ray: ``ray.util.ActorPool``).

Each value goes to an idle actor as ``fn(actor, value)`` (which must return an
ObjectRef, or a list of them); values that find no idle actor wait in the pool and go
out as actors come back. Results come back in submission order (``get_next``, ``map``)
or as they finish (``get_next_unordered``, ``map_unordered``). Built only on the public
core API (``get``, ``wait``): the pool itself lives in the caller, not in the cluster.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import raylite

__all__ = ["ActorPool"]


def _key(future):
    """The ref ``wait`` watches for a submission: a task's returns are all set at once,
    so the first of a list stands for all of them."""
    return future[0] if isinstance(future, (list, tuple)) else future


class ActorPool:
    """Spread work over a fixed set of actors, one call per actor at a time.

    ``pool.map(lambda a, v: a.double.remote(v), [1, 2, 3])`` yields ``[2, 4, 6]`` in
    order. Same names and semantics as Ray's, with one difference: a list of refs
    returned by ``fn`` (``num_returns > 1``) works with the unordered calls too (Ray
    passes such a list to ``wait``, which rejects it).
    """

    def __init__(self, actors: list):
        self._idle: list = list(actors)
        self._future_to_actor: dict = {}   # key ref -> (index, actor)
        self._index_to_future: dict = {}   # index -> what fn returned
        self._next_task_index = 0
        self._next_return_index = 0
        self._pending_submits: collections.deque = collections.deque()

    # ------------------------------------------------------------------ submitting
    def submit(self, fn: Callable[[Any, Any], Any], value) -> None:
        """Run ``fn(actor, value)`` on an idle actor, or queue it until one is free."""
        if not self._idle:
            self._pending_submits.append((fn, value))
            return
        actor = self._idle.pop()
        future = fn(actor, value)
        index = self._next_task_index
        self._next_task_index += 1
        self._future_to_actor[_key(future)] = (index, actor)
        self._index_to_future[index] = future

    def map(self, fn: Callable[[Any, Any], Any], values: Iterable) -> Iterator:
        """Submit ``fn(actor, v)`` for every value now; the iterator yields the results
        in the order of ``values``. Results of earlier submissions not read yet are
        dropped first (as Ray)."""
        return self._map(fn, values, self.get_next)

    def map_unordered(self, fn: Callable[[Any, Any], Any], values: Iterable) -> Iterator:
        """As :meth:`map`, but yields each result as soon as it is ready."""
        return self._map(fn, values, self.get_next_unordered)

    def _map(self, fn, values, next_result) -> Iterator:
        self._drop_unread()
        for v in values:
            self.submit(fn, v)

        def results():
            while self.has_next():
                yield next_result()
        return results()

    def _drop_unread(self) -> None:
        while self.has_next():
            try:
                self.get_next(timeout=0, ignore_if_timedout=True)
            except TimeoutError:
                pass

    # ------------------------------------------------------------------ results
    def has_next(self) -> bool:
        """Whether any submitted value has a result not read yet."""
        return bool(self._future_to_actor)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False):
        """The next result in submission order (raises the call's error, if it failed).

        With ``timeout``, raises ``TimeoutError`` when the result is not ready in time;
        ``ignore_if_timedout=True`` then also drops that submission (its actor goes back
        to the pool), so the next call moves on to the one after it.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        index = self._next_return_index
        if index not in self._index_to_future:  # read out of order already
            raise ValueError("It is not allowed to call get_next() after "
                             "get_next_unordered().")
        future = self._index_to_future[index]
        if timeout is not None:
            ready, _ = raylite.wait([_key(future)], timeout=timeout)
            if not ready:
                if not ignore_if_timedout:
                    raise TimeoutError("Timed out waiting for result")
                self._release(index, future)
                raise TimeoutError(f"Timed out waiting for result; the submission "
                                   f"{index} is dropped")
        self._release(index, future)
        return raylite.get(future)

    def get_next_unordered(self, timeout: float | None = None,
                           ignore_if_timedout: bool = False):
        """Any result that is ready (waiting for the first to finish). After this,
        :meth:`get_next` may not be called until the results read out of order are
        past (as Ray). ``timeout`` and ``ignore_if_timedout`` as for :meth:`get_next`
        (a dropped submission is the oldest one)."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        ready, _ = raylite.wait(list(self._future_to_actor), num_returns=1, timeout=timeout)
        if not ready:
            if not ignore_if_timedout:
                raise TimeoutError("Timed out waiting for result")
            index = min(self._index_to_future)
            self._release(index, self._index_to_future[index])
            raise TimeoutError(f"Timed out waiting for result; the submission {index} "
                               "is dropped")
        index, _ = self._future_to_actor[ready[0]]
        future = self._index_to_future[index]
        self._release(index, future)
        return raylite.get(future)

    def _release(self, index: int, future) -> None:
        """Forget a submission whose result is read (or dropped) and free its actor."""
        del self._index_to_future[index]
        _, actor = self._future_to_actor.pop(_key(future))
        self._next_return_index = max(self._next_return_index, index + 1)
        self._return_actor(actor)

    def _return_actor(self, actor) -> None:
        self._idle.append(actor)
        if self._pending_submits:
            self.submit(*self._pending_submits.popleft())

    # ------------------------------------------------------------------ actors
    def has_free(self) -> bool:
        """Whether an actor is idle and no submission is waiting for one."""
        return bool(self._idle) and not self._pending_submits

    def pop_idle(self):
        """Take an idle actor out of the pool (None if none is free)."""
        return self._idle.pop() if self.has_free() else None

    def push(self, actor) -> None:
        """Add an actor to the pool (it takes a waiting submission at once, if any).
        Raises ValueError if the actor is in the pool already."""
        busy = [a for _, a in self._future_to_actor.values()]
        if actor in self._idle or actor in busy:
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)
