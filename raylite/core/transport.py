"""ZeroMQ plumbing shared by every process: inboxes, a thread-safe outbox, authentication.

Each process binds one ROUTER *inbox* and sends through DEALERs, one per destination,
kept in an :class:`~raylite.core.outbox.Outbox` (any thread may send; a peer that does
not read gets a bounded backlog and its producers are slowed, see there). Every socket
made here has bounded send and receive high-water marks (:func:`socket_hwm`): ZeroMQ
never queues without bound for a slow, stopped or dead peer. The head's event stream
(XPUB/SUB) has its own, larger bound (:func:`event_hwm`): like any ZeroMQ PUB, it drops
events for a subscriber that far behind rather than grow, where Ray's GCS pub/sub
would buffer them.

Security: every cluster has a secret *token* from its first second, also on loopback
(``LocalCluster`` makes one when none is given). Every socket that listens is a ZeroMQ
security *server* checked by a ZAP authenticator running in this process, so a peer that
does not prove it holds the token is refused during the handshake, before a single frame
of it reaches the process: nothing unauthenticated is ever read, let alone unpickled.

- On loopback (127.0.0.0/8) the mechanism is PLAIN: the token is the password. Only
  processes of this machine can see loopback traffic.
- Anywhere else it is CURVE: the server's and the clients' key pairs are derived from the
  token (so every holder of the token can compute them and nobody else can), the
  handshake proves both sides hold the token without sending it, and every frame is
  encrypted.

Whether a connection is PLAIN or CURVE follows from its address, on both ends: a socket
whose advertised address is loopback is PLAIN, any other CURVE, and a peer connecting to
``tcp://HOST:PORT`` uses the mechanism HOST implies. (A socket bound on ``0.0.0.0`` is
advertised under this host's address: reach it through that address.)
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os

import zmq

log = logging.getLogger(__name__)

_USER = "raylite"
_DOMAIN = "raylite"
# pyzmq's authenticator logs PLAIN passwords at DEBUG: never let it
_auth_log = logging.getLogger("raylite.auth")
_auth_log.setLevel(logging.INFO)


class MissingTokenError(ValueError):
    """A process tried to join a cluster without its token."""


def is_loopback(host: str) -> bool:
    """True for 'localhost' and 127.0.0.0/8 (and ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_of(addr: str) -> str:
    """'tcp://HOST:PORT' -> 'HOST'."""
    return addr.split("://", 1)[-1].rsplit(":", 1)[0]


def curve_keys(token: str) -> tuple[bytes, bytes, bytes, bytes]:
    """(server public, server secret, client public, client secret), Z85-encoded, derived
    from the token: all holders of the token compute the same pairs."""
    from zmq.utils import z85

    def pair(role: bytes) -> tuple[bytes, bytes]:
        secret = z85.encode(hashlib.sha256(b"raylite-curve-" + role + b"\0" +
                                           token.encode()).digest())
        return zmq.curve_public(secret), secret

    return (*pair(b"server"), *pair(b"client"))


class _ClientKey:
    """ZAP credentials check for CURVE: only the client key derived from the token."""

    def __init__(self, public: bytes):
        self.public = public

    def callback(self, domain: str, key: bytes) -> bool:
        return key == self.public


class Transport:
    """A process's ZeroMQ context with its authentication settings (see the module doc).

    ``token`` is required: a Transport without one could neither accept nor reach a peer.
    """

    def __init__(self, token: str | None, bind_host: str = "127.0.0.1"):
        if not token:
            raise MissingTokenError(
                "No cluster token: every raylite cluster authenticates its peers. Pass the "
                "token the head printed (init(address=..., _token=...), --token or "
                "RAYLITE_TOKEN), or use address='auto' on the head's machine.")
        self.ctx = zmq.Context()
        self.token = token
        self.bind_host = bind_host
        self._keys = curve_keys(token)
        from zmq.auth.thread import ThreadAuthenticator

        # the ZAP handler must run before the first bind: without one, libzmq would accept
        # any credentials
        self._auth = ThreadAuthenticator(self.ctx, log=_auth_log)
        self._auth.start()
        self._auth.configure_plain(domain=_DOMAIN, passwords={_USER: token})
        self._auth.configure_curve_callback(domain=_DOMAIN,
                                            credentials_provider=_ClientKey(self._keys[2]))

    def secure_server(self, sock: zmq.Socket, host: str) -> None:
        """Make ``sock`` (about to bind on ``host``) authenticate every peer."""
        sock.zap_domain = _DOMAIN.encode()
        if is_loopback(host):
            sock.plain_server = True
        else:
            sock.curve_secretkey = self._keys[1]
            sock.curve_publickey = self._keys[0]
            sock.curve_server = True

    def secure_client(self, sock: zmq.Socket, addr: str) -> None:
        """Give ``sock`` (about to connect to ``addr``) the credentials its server checks."""
        if is_loopback(host_of(addr)):
            sock.plain_username = _USER.encode()
            sock.plain_password = self.token.encode()
        else:
            sock.curve_serverkey = self._keys[0]
            sock.curve_publickey = self._keys[2]
            sock.curve_secretkey = self._keys[3]

    def bind(self, sock_type: int = zmq.ROUTER, port: int | None = None) -> tuple[zmq.Socket, str]:
        """Bind an authenticating socket on the configured host (a random port unless
        given); returns it and the address peers should use."""
        sock = self.ctx.socket(sock_type)
        _tune(sock, sock_type)
        host = self.bind_host
        advertised = _advertise(host)
        self.secure_server(sock, advertised)  # the mechanism its peers will pick
        if port:
            sock.bind(f"tcp://{host}:{port}")
        else:
            port = sock.bind_to_random_port(f"tcp://{host}")
        return sock, f"tcp://{advertised}:{port}"

    def connect(self, addr: str, sock_type: int = zmq.DEALER) -> zmq.Socket:
        """Connect a socket to a peer's inbox, presenting the token's credentials."""
        sock = self.ctx.socket(sock_type)
        _tune(sock, sock_type)
        self.secure_client(sock, addr)
        sock.connect(addr)
        return sock

    def close(self, linger_ms: int = 200) -> None:
        self._auth.stop()
        self.ctx.destroy(linger=linger_ms)


def socket_hwm() -> int:
    """Messages a socket queues each way (``RAYLITE_SOCKET_HWM``, default 5000) before
    a send to it returns EAGAIN (and the outbox backlogs it) or its peer stops reading
    from the connection (TCP pushes back on the sender)."""
    return max(1, int(os.environ.get("RAYLITE_SOCKET_HWM", "5000")))


def event_hwm() -> int:
    """Events the head's stream queues per subscriber (``RAYLITE_EVENT_HWM``, default
    100000): a subscriber that falls further behind misses events (ZeroMQ PUB)."""
    return max(1, int(os.environ.get("RAYLITE_EVENT_HWM", "100000")))


def _tune(sock: zmq.Socket, sock_type: int) -> None:
    hwm = event_hwm() if sock_type in (zmq.PUB, zmq.XPUB, zmq.SUB, zmq.XSUB) else socket_hwm()
    sock.sndhwm = hwm
    sock.rcvhwm = hwm
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
