"""ZeroMQ plumbing shared by every process: inboxes, a thread-safe outbox, authentication.

Each process binds one ROUTER *inbox* and sends through DEALERs, one per destination,
kept in an :class:`Outbox`. Sends are guarded by a lock so any thread (the notebook's,
an actor's thread pool, the IO thread) may send without a hop through another thread.

Security: a cluster that listens only on 127.0.0.1 needs no credentials. A cluster bound
to a network interface has a shared *token*: every inbox then runs ZeroMQ's PLAIN
handshake checked by a ZAP authenticator, so a connection without the token is refused
(and logged) before a single frame of it reaches the process — nothing unauthenticated
is ever unpickled.
"""

from __future__ import annotations

import logging
import threading

import zmq

log = logging.getLogger(__name__)

_USER = "raylite"


class Transport:
    """A process's ZeroMQ context with its authentication settings."""

    def __init__(self, token: str | None = None, bind_host: str = "127.0.0.1"):
        self.ctx = zmq.Context()
        self.token = token or None
        self.bind_host = bind_host
        self._auth = None
        if self.token:
            from zmq.auth.thread import ThreadAuthenticator

            self._auth = ThreadAuthenticator(self.ctx, log=logging.getLogger("raylite.auth"))
            self._auth.start()
            self._auth.configure_plain(domain="*", passwords={_USER: self.token})

    def bind(self, sock_type: int = zmq.ROUTER, port: int | None = None) -> tuple[zmq.Socket, str]:
        """Bind a socket on the configured host (a random port unless given)."""
        sock = self.ctx.socket(sock_type)
        _tune(sock)
        if self.token:
            sock.plain_server = True
        host = self.bind_host
        if port:
            sock.bind(f"tcp://{host}:{port}")
        else:
            port = sock.bind_to_random_port(f"tcp://{host}")
        return sock, f"tcp://{_advertise(host)}:{port}"

    def connect(self, addr: str, sock_type: int = zmq.DEALER) -> zmq.Socket:
        """Connect a socket to a peer's inbox, presenting the token when there is one."""
        sock = self.ctx.socket(sock_type)
        _tune(sock)
        if self.token:
            sock.plain_username = _USER.encode()
            sock.plain_password = self.token.encode()
        sock.connect(addr)
        return sock

    def close(self, linger_ms: int = 200) -> None:
        if self._auth is not None:
            self._auth.stop()
        self.ctx.destroy(linger=linger_ms)


def _tune(sock: zmq.Socket) -> None:
    sock.sndhwm = 0
    sock.rcvhwm = 0
    sock.linger = 500


def _advertise(host: str) -> str:
    """The address peers should use for a socket bound on ``host``."""
    if host == "localhost":
        return "127.0.0.1"
    if host in ("0.0.0.0", "*", ""):
        import socket

        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "127.0.0.1"
    return host


class Outbox:
    """Sends messages to addresses; one DEALER per destination, safe from any thread."""

    def __init__(self, transport: Transport):
        self._transport = transport
        self._socks: dict[str, zmq.Socket] = {}
        self._lock = threading.Lock()
        self.closed = False

    def send(self, addr: str, frames: list) -> None:
        with self._lock:
            if self.closed:
                return
            sock = self._socks.get(addr)
            if sock is None:
                sock = self._socks[addr] = self._transport.connect(addr)
            # Never block: a socket whose peer died (or refused our token) has no pipe, and
            # a blocking send would hang the caller. Such a socket may also be aimed at an
            # address a new process now uses (ports get reused), so reconnect and try once
            # more before giving up on the message.
            for _attempt in (0, 1):
                try:
                    sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                    return
                except zmq.Again:
                    sock.close(linger=0)
                    sock = self._socks[addr] = self._transport.connect(addr)
            log.debug("dropped a message to unreachable peer %s", addr)

    def forget(self, addr: str) -> None:
        """Drop the connection to a peer that died (its queued messages are discarded)."""
        with self._lock:
            sock = self._socks.pop(addr, None)
            if sock is not None:
                sock.close(linger=0)

    def close(self, linger_ms: int = 200) -> None:
        with self._lock:
            self.closed = True
            for sock in self._socks.values():
                sock.close(linger=linger_ms)
            self._socks.clear()
