"""Remote helpers that many test modules share (import: ``from fixtures import ...``;
``tests/`` is on the path of the driver, and so of its workers).

- ``Signal``: a gate (``raylite.testing.SignalActor`` as a 0-CPU actor): a call of
  ``sig.wait`` returns once ``sig.send`` was called.
- ``Attempts``: a counter (``CounterActor``), for counting the runs of retried tasks.
- ``blocked(sig, value)``: a task that waits at ``sig`` and then returns ``value``.
- ``send_then_drop(base_url, request, ...)``: an HTTP client that goes away mid-request.
"""

from __future__ import annotations

import socket

import raylite
from raylite.testing import CounterActor, SignalActor

Signal = raylite.remote(num_cpus=0)(SignalActor)
Attempts = raylite.remote(num_cpus=0)(CounterActor)


@raylite.remote
def blocked(sig, value=None):
    raylite.get(sig.wait.remote())
    return value


def send_then_drop(base_url: str, request: bytes, until: bytes = b"", count: int = 1,
                   before_close=None) -> bytes:
    """Send a raw HTTP request, read until ``until`` has appeared ``count`` times in the
    answer (nothing is read for ``until=b""``), call ``before_close()`` if given, then
    close the socket: a client that goes away. Returns what was read."""
    host, port = base_url.rsplit("/", 1)[-1].split(":")
    got = b""
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        while until and got.count(until) < count:
            data = s.recv(4096)
            assert data, f"the server closed the connection first: {got!r}"
            got += data
        if before_close is not None:
            before_close()
    return got
