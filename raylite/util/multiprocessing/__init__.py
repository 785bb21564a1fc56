"""Ray's ``ray.util.multiprocessing``: a ``multiprocessing.Pool`` whose processes are
raylite actors, so code written for the standard library's pool spreads over a cluster."""

from __future__ import annotations

from raylite.util.multiprocessing.pool import AsyncResult, IMapIterator, Pool, TimeoutError

__all__ = ["Pool", "AsyncResult", "IMapIterator", "TimeoutError"]
