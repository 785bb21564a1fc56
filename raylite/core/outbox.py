"""The outbox: a process's sending side, with bounded queues and back-pressure.

One DEALER per destination (connected on first use), safe from any thread: a lock
guards the sockets, so the notebook's thread, an actor's thread pool and the IO thread
all send without a hop through another thread.

What happens when a peer does not read
--------------------------------------
Every raylite socket has bounded send and receive high-water marks
(``RAYLITE_SOCKET_HWM`` messages each, see :func:`raylite.core.transport.socket_hwm`).
A message to a peer goes

1. straight into the peer's DEALER with ``NOBLOCK`` (the hot path: one dict lookup more
   than with unbounded queues). ZeroMQ holds up to the HWM here and up to the HWM in the
   peer's inbox, plus what the kernel's TCP buffers take;
2. when that is full (EAGAIN: the peer reads slower than we write, is stopped, or died
   without the cluster knowing yet), into the peer's *backlog*, a deque in this process.
   Once a peer has a backlog every later message to it queues behind it, so each peer
   still sees messages in the order they were sent (actor calls rely on it). A flusher
   thread, started at the first backlog, waits on the backlogged sockets' file
   descriptors and moves each backlog into its socket as it becomes writable (POLLOUT).
   Nothing is dropped;
3. the *producers* are slowed: :meth:`Outbox.throttle` blocks the calling thread while
   the peer's backlog holds ``RAYLITE_SEND_BACKLOG`` messages (default 10000) or
   ``RAYLITE_SEND_BACKLOG_BYTES`` (default 256 MiB) and lets it go once the backlog is
   down to half of both. It is called where a thread produces without
   bound and holds no lock: an actor call (``.remote()`` blocks while the actor does not
   read), a worker's task results and streamed items. (Normal tasks need none: an owner
   keeps at most ``RAYLITE_PIPELINE_DEPTH`` in flight per leased worker, the rest wait
   in its task queue, as in Ray.) The threads that must never block
   (``never_block``: a process's IO loop, which is what reads its inbox; two loops
   waiting on each other would deadlock) are not throttled. Where such a thread could
   send in bulk (the calls queued for an actor that just started or restarted) it holds
   back while :meth:`Outbox.full` says so and tries again at its next tick; its other
   sends are answers to requests and pipelined tasks, bounded by the protocol, which
   queue past the limit rather than being dropped;
4. a peer the cluster declares dead (:meth:`Outbox.forget`, on the head's word) has its
   socket and backlog dropped (counted in ``dropped``), and its throttled producers wake
   up and carry on: they find the peer dead, so an actor call fails with
   ``ActorDiedError`` through the usual path, never a hang.

A peer that refuses our token (a process of another cluster now on that port) makes
ZeroMQ close the DEALER's pipe for good; a monitor on the DEALER reports the refusal
and the outbox reconnects, so a process of this cluster that takes the port later is
reached (what was sent to the refusing one could never be delivered).

So a caller far ahead of a slow actor (a sync actor reads its next call when it starts it:
about twice the HWM plus the backlog limit, 20000 small calls by default) blocks in
``.remote()`` until the actor catches up, where Ray would queue every call in the
caller's memory; calls that wait on something the caller does only after submitting
them all would then wait for ever (the warning says so after 10 s).

Ray: gRPC's flow control and the core worker's per-connection queues play this role;
Ray's only producer back-pressure is ``max_pending_calls`` on actors (raylite has it
too, raising ``PendingCallsLimitExceeded``) and the streaming generator's
``_generator_backpressure_num_objects``. raylite bounds every peer.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import threading
import time

import zmq

log = logging.getLogger(__name__)

# the only events a DEALER's monitor reports: its peer refused the handshake, after
# which ZeroMQ has closed its pipe and never reconnects
_REFUSED = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
FLUSH_WAIT_S = 0.02    # the flusher's longest wait between two tries (a missed POLLOUT edge)
WARN_BLOCKED_S = 10.0  # a producer blocked this long logs which peer does not read


def backlog_limits() -> tuple[int, int]:
    """(messages, bytes) a peer's backlog holds before producers sending to it block."""
    return (max(1, int(os.environ.get("RAYLITE_SEND_BACKLOG", "10000"))),
            max(1, int(os.environ.get("RAYLITE_SEND_BACKLOG_BYTES", str(256 << 20)))))


def _nbytes(frames: list) -> int:
    return sum(memoryview(f).nbytes for f in frames)


class _Backlog(collections.deque):
    """One peer's waiting messages, ``(frames, nbytes)`` in sending order, and their bytes."""

    nbytes = 0

    def push(self, frames: list) -> int:
        size = _nbytes(frames)
        self.append((frames, size))
        self.nbytes += size
        return size


class Outbox:
    """Sends messages to addresses, one DEALER per destination, from any thread, with a
    bounded per-peer backlog and producer back-pressure (see the module doc)."""

    def __init__(self, transport):
        self._transport = transport
        self._socks: dict[str, zmq.Socket] = {}
        self._monitors: dict[str, zmq.Socket] = {}
        self._backlog: dict[str, _Backlog] = {}
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._flusher: threading.Thread | None = None
        self.limit, self.byte_limit = backlog_limits()
        self.never_block: set[int] = set()  # thread idents that throttle() never blocks
        self.closed = False
        self.queued = 0    # messages waiting in backlogs now
        self.queued_bytes = 0
        self.peak = 0      # the most that ever waited at once
        self.dropped = 0   # backlogged messages dropped because their peer died
        self.blocked = 0   # producers blocked in throttle() now

    # ------------------------------------------------------------------ sending
    def send(self, addr: str, frames: list) -> None:
        """Send ``frames`` to ``addr``; never blocks, never drops (see the module doc)."""
        with self._lock:
            if self.closed:
                return
            q = self._backlog.get(addr)
            if q is not None:  # behind what waits already, in order
                self._count(1, q.push(frames))
                self._flush(addr, q)
                return
            sock = self._socks.get(addr)
            if sock is None:
                sock = self._connect(addr)
            try:
                sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                return
            except zmq.Again:
                pass
            if self._refused(addr):
                try:
                    self._connect(addr).send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                    return
                except zmq.Again:
                    pass
            q = self._backlog[addr] = _Backlog()
            self._count(1, q.push(frames))
            self._start_flusher()

    def throttle(self, addr: str, timeout: float | None = None) -> bool:
        """Block while ``addr``'s backlog is full (in messages or bytes), until it is down
        to half (back-pressure on a producer; call it holding no lock). Returns False
        when the peer was forgotten (dead) or the outbox closed meanwhile, or ``timeout``
        passed."""
        if not self.full(addr) or threading.get_ident() in self.never_block:
            return True
        start = time.monotonic()
        warned = False
        with self._lock:
            sock = self._socks.get(addr)
            self.blocked += 1
            try:
                while True:
                    if self.closed or self._socks.get(addr) is not sock:
                        return False
                    q = self._backlog.get(addr)
                    if q is None or (len(q) <= self.limit // 2
                                     and q.nbytes <= self.byte_limit // 2):
                        return True
                    waited = time.monotonic() - start
                    if timeout is not None and waited >= timeout:
                        return False
                    if not warned and waited >= WARN_BLOCKED_S:
                        warned = True
                        log.warning("%d messages wait for %s, which does not read them (it "
                                    "is stopped, or slower than this process sends): this "
                                    "thread waits until it reads or is declared dead "
                                    "(RAYLITE_SEND_BACKLOG: how many may wait)", len(q), addr)
                    self._drained.wait(1.0 if timeout is None else
                                       min(1.0, timeout - waited))
            finally:
                self.blocked -= 1

    def full(self, addr: str) -> bool:
        """Whether ``addr``'s backlog is at its limit (an unlocked peek, the hot path's
        one dict lookup): a sender that must not block holds back while it is."""
        q = self._backlog.get(addr)
        return q is not None and (len(q) >= self.limit or q.nbytes >= self.byte_limit)

    def forget(self, addr: str) -> None:
        """Drop the connection to a peer that died, with everything queued for it, and
        wake the producers waiting on it."""
        with self._lock:
            q = self._backlog.pop(addr, None)
            if q:
                self.queued -= len(q)
                self.queued_bytes -= q.nbytes
                self.dropped += len(q)
            self._close_sock(addr, 0)
            self._drained.notify_all()

    def stats(self) -> dict:
        """The backlog's counters (for tests and the state API): messages ``queued`` now
        (and ``queued_bytes``), its ``peak``, ``dropped`` (dead peers), ``blocked``
        producers, the limits and the backlog of each peer that has one."""
        with self._lock:
            return {"queued": self.queued, "queued_bytes": self.queued_bytes,
                    "peak": self.peak, "dropped": self.dropped, "blocked": self.blocked,
                    "limit": self.limit, "byte_limit": self.byte_limit,
                    "peers": {a: len(q) for a, q in self._backlog.items()}}

    def close(self, linger_ms: int = 200) -> None:
        """Close every socket, first flushing the backlogs for up to ``linger_ms`` (a
        worker's last results may still wait there)."""
        deadline = time.monotonic() + linger_ms / 1000
        while True:
            with self._lock:
                for addr, q in list(self._backlog.items()):
                    self._flush(addr, q)
                fds, ready = self._backlog_fds()
                if not fds or time.monotonic() >= deadline:
                    self.closed = True
                    self._drained.notify_all()
                    if self._backlog:
                        log.warning("closing with %d messages unsent", self.queued)
                    for addr in list(self._socks):
                        self._close_sock(addr, linger_ms)
                    self._backlog.clear()
                    self.queued = self.queued_bytes = 0
                    break
            if not ready:
                _wait_readable(fds, min(FLUSH_WAIT_S, max(0.0, deadline - time.monotonic())))
        self._wake.set()

    # ------------------------------------------------------------------ internals (lock held)
    def _count(self, n: int, nbytes: int) -> None:
        self.queued += n
        self.queued_bytes += nbytes
        if self.queued > self.peak:
            self.peak = self.queued

    def _connect(self, addr: str) -> zmq.Socket:
        self._close_sock(addr, 0)
        sock = self._socks[addr] = self._transport.connect(addr)
        self._monitors[addr] = sock.get_monitor_socket(_REFUSED)
        return sock

    def _close_sock(self, addr: str, linger_ms: int) -> None:
        sock = self._socks.pop(addr, None)
        mon = self._monitors.pop(addr, None)
        if sock is None:
            return
        try:
            sock.disable_monitor()
        except zmq.ZMQError:
            pass
        if mon is not None:
            mon.close(linger=0)
        sock.close(linger=linger_ms)

    def _refused(self, addr: str) -> bool:
        """Whether ``addr``'s peer refused our handshake (its pipe is gone for good)."""
        mon = self._monitors.get(addr)
        try:
            return mon is not None and bool(mon.poll(0))
        except zmq.ZMQError:
            return False

    def _flush(self, addr: str, q: _Backlog) -> None:
        """Move as much of ``addr``'s backlog into its socket as it takes now."""
        sock = self._socks[addr]
        sent = sent_bytes = 0
        try:
            while q:
                frames, size = q[0]
                sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                q.popleft()
                sent += 1
                sent_bytes += size
        except zmq.Again:
            if self._refused(addr):
                self._connect(addr)  # the next round sends there
        if sent:
            q.nbytes -= sent_bytes
            self.queued -= sent
            self.queued_bytes -= sent_bytes
            self._drained.notify_all()
        if not q:
            del self._backlog[addr]

    def _backlog_fds(self) -> tuple[list[int], bool]:
        """The backlogged sockets' fds to wait on, and whether one is writable already.
        Reading ZMQ_EVENTS takes the socket's pending commands in (room freed by the
        peer arrives as one), which re-arms its edge-triggered fd."""
        fds, ready = [], False
        for addr in self._backlog:
            sock = self._socks[addr]
            if sock.getsockopt(zmq.EVENTS) & zmq.POLLOUT:
                ready = True
            fds.append(sock.getsockopt(zmq.FD))
        return fds, ready

    def _start_flusher(self) -> None:
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_loop, daemon=True,
                                             name="raylite-outbox-flush")
            self._flusher.start()
        self._wake.set()

    # ------------------------------------------------------------------ the flusher thread
    def _flush_loop(self) -> None:
        """Wait until a backlogged socket can take more, flush it, repeat; with no
        backlog, sleep until the next one starts."""
        while True:
            try:
                with self._lock:
                    if self.closed:
                        return
                    for addr, q in list(self._backlog.items()):
                        self._flush(addr, q)
                    fds, ready = self._backlog_fds()
            except Exception:  # never let the thread die: the backlogs would stay
                log.exception("outbox flusher")
                fds, ready = [], False
                time.sleep(FLUSH_WAIT_S)
            if fds:
                if not ready:
                    _wait_readable(fds, FLUSH_WAIT_S)
            else:
                self._wake.wait(1.0)
                self._wake.clear()


def _wait_readable(fds: list[int], timeout: float) -> None:
    """Wait for a socket fd to signal, at most ``timeout``; a socket closed meanwhile
    (forgotten by another thread) only ends the wait."""
    try:
        select.select(fds, [], [], timeout)
    except (OSError, ValueError):
        pass
