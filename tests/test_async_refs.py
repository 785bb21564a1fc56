"""Core behaviour Serve leans on: ``ref.future()`` / ``await ref`` resolve without a
thread per result, and an async actor's async generator streams each value as it is
yielded (not once it is exhausted)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from fixtures import Signal

import raylite as ray

pytestmark = pytest.mark.timeout(30)


@ray.remote(num_cpus=0)
class Echo:
    async def echo(self, x):
        return x

    async def fail(self):
        raise KeyError("nope")

    async def big(self):
        return np.ones(1 << 20, dtype=np.uint8)

    async def stream(self, signal):
        yield 1
        await signal.wait.remote()
        yield 2


def test_futures_resolve_without_a_thread_each(shared_cluster, monkeypatch):
    a = Echo.remote()
    assert ray.get(a.echo.remote(0)) == 0
    started = []
    real_start = threading.Thread.start

    def counting_start(self):
        started.append(self.name)
        return real_start(self)
    monkeypatch.setattr(threading.Thread, "start", counting_start)
    futs = [a.echo.remote(i).future() for i in range(200)]
    assert [f.result(10) for f in futs] == list(range(200))
    assert len(started) < 10, started  # not one per result


def test_await_ref_values_errors_and_stored_objects(shared_cluster):
    a = Echo.remote()

    async def main():
        assert await a.echo.remote({"k": [1, 2]}) == {"k": [1, 2]}
        with pytest.raises(KeyError):
            await a.fail.remote()
        big = await a.big.remote()  # read from the object store, on its own thread
        assert big.nbytes == 1 << 20
    asyncio.run(main())


def test_async_generator_streams_before_it_ends(shared_cluster):
    a, sig = Echo.remote(), Signal.remote()
    gen = a.stream.options(num_returns="streaming").remote(sig)
    first = next(gen)  # arrives while the generator still waits for the signal
    assert ray.get(first, timeout=10) == 1
    sig.send.remote()
    assert [ray.get(r, timeout=10) for r in gen] == [2]
