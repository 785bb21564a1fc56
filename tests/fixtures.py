"""Remote helpers that many test modules share (import: ``from fixtures import ...``;
``tests/`` is on the path of the driver, and so of its workers).

- ``Signal``: a gate (``raylite.testing.SignalActor`` as a 0-CPU actor): a call of
  ``sig.wait`` returns once ``sig.send`` was called.
- ``Attempts``: a counter (``CounterActor``), for counting the runs of retried tasks.
- ``blocked(sig, value)``: a task that waits at ``sig`` and then returns ``value``.
- ``send_then_drop(base_url, request, ...)``: an HTTP client that goes away mid-request.
- ``refused_dealer(addr, password=...)``: a raw ZeroMQ peer without the token, for
  attacks that a cluster must refuse (never blocks, always closed).
"""

from __future__ import annotations

import contextlib
import socket
import time

import zmq

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


_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                     | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


@contextlib.contextmanager
def refused_dealer(addr: str, *, password: bytes | None = None, linger: int = 0):
    """A raw DEALER connected to ``addr`` as an attacker would (no credentials, or PLAIN
    ones with ``password``), watched by a monitor; closed and its context ended on exit
    (a context left with a queued message makes ``term()`` hang the test run's exit).
    ``peer.send(frames)`` queues frames without ever blocking; ``peer.wait_refused()``
    waits until the peer refused the handshake (ZeroMQ then never reconnects, so a
    blocking send could wait forever)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = linger
    if password is not None:
        sock.plain_username, sock.plain_password = b"raylite", password
    monitor = sock.get_monitor_socket(_HANDSHAKE_FAILED)
    sock.connect(addr)
    peer = _RawPeer(sock, monitor)
    try:
        yield peer
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close()
        ctx.term()


class _RawPeer:
    def __init__(self, sock, monitor):
        self.sock, self.monitor, self.refused = sock, monitor, False

    def _poll_refused(self, timeout_ms: int) -> bool:
        if not self.refused and self.monitor.poll(timeout_ms):
            self.refused = True
        return self.refused

    def send(self, frames: list, timeout: float = 30) -> str:
        """"queued", or "refused" when the handshake failed before a pipe took them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.sock.send_multipart(frames, flags=zmq.NOBLOCK)
                return "queued"
            except zmq.Again:
                if self._poll_refused(20):
                    return "refused"
        raise TimeoutError(f"frames neither queued nor refused in {timeout} s")

    def wait_refused(self, timeout: float = 30) -> None:
        if not self._poll_refused(int(timeout * 1000)):
            raise TimeoutError(f"the peer did not refuse the handshake in {timeout} s")
