"""The runtime interface: what the layers above the core (the autoscaler, the state API,
widgets, ``cluster_utils``) may use of this process's connection to a cluster.

The rule of the boundary: those layers import ``raylite``, ``raylite.util``,
``raylite.exceptions`` and this module, and never a private name of the core; they do
not send protocol messages or read the CoreWorker's tables themselves. Nothing here
starts a cluster (``raylite.core.lifecycle.require_core`` does, for the public API);
functions that need a connection raise RuntimeError without one.

- the connection: :func:`current` (an opaque session token), :func:`is_initialized`;
  :func:`add_shutdown_hook` / :func:`remove_shutdown_hook` (run first by ``shutdown()``)
- the cluster: :func:`cluster_state` (the head's state sections: nodes, demand, ...),
  :func:`cluster_nodes`, :func:`remove_node`, :func:`report_autoscaler`,
  :func:`local_cluster` (the processes ``init()`` started here: add and remove nodes),
  :func:`start_cluster` and :func:`query_nodes` (a cluster without joining it)
- objects and tasks: :func:`owned_objects`, :func:`stored_objects`,
  :func:`flush_task_events`
- events: :func:`subscribe_events` (:class:`EventSubscription`, a socket of its own on
  the head's event stream, on raylite's own runtime)

The cluster, object and event functions go to the backend this process uses
(``runtime.backend``): on Ray they read Ray's state API, and those with no Ray
equivalent (adding and removing raylite nodes, the autoscaler's reports) are raylite's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from raylite.core import driver, runtime
from raylite.core import protocol as P
from raylite.core.driver import LocalCluster, new_session_id
from raylite.core.object_ref import new_id

__all__ = ["current", "is_initialized", "add_shutdown_hook", "remove_shutdown_hook",
           "cluster_state", "cluster_nodes", "remove_node", "report_autoscaler",
           "local_cluster", "start_cluster", "query_nodes", "owned_objects",
           "stored_objects", "flush_task_events", "subscribe_events", "run_shutdown_hooks",
           "EventSubscription", "EVENT_TOPICS", "LocalCluster"]

# the event stream's topics, by name
EVENT_TOPICS = {"node": P.EV_NODE, "task": P.EV_TASK, "actor": P.EV_ACTOR,
                "placement_group": P.EV_PG, "autoscaler": P.EV_AUTOSCALER,
                "pending": P.EV_PENDING, "log": P.EV_LOG}
_TOPIC_NAMES = {v: k for k, v in EVENT_TOPICS.items()}


# ------------------------------------------------------------------ the connection
def current():
    """An opaque token for this process's connection: None before ``init()`` and after
    ``shutdown()``, a new one after each ``init()``."""
    return runtime.core


def is_initialized() -> bool:
    return runtime.core is not None


def _connected(session=None):
    core = session if session is not None else runtime.core
    if core is None:
        raise RuntimeError("raylite is not initialized")
    return core


def add_shutdown_hook(fn: Callable[[], None]) -> None:
    """Call ``fn`` first thing in ``raylite.shutdown()`` (a failing hook is ignored)."""
    driver._State.shutdown_hooks.append(fn)


def remove_shutdown_hook(fn: Callable[[], None]) -> None:
    if fn in driver._State.shutdown_hooks:
        driver._State.shutdown_hooks.remove(fn)


# ------------------------------------------------------------------ the cluster
# The state functions below are the backend's (``runtime.backend``): raylite's own asks
# its head, Ray's reads Ray's state API (:mod:`raylite.core.own_backend`,
# ``raylite.backends.ray_backend``).
def cluster_state(*sections: str, limit: int | None = None, session=None,
                  timeout: float | None = 30.0) -> dict:
    """The cluster's state sections (nodes, workers, actors, placement_groups, tasks,
    demand, autoscaler; all when none is named) in one round trip, as raylite's records.
    Given ``session`` (from :func:`current`) it gives up as soon as that session ends."""
    return runtime.backend.cluster_state(*sections, limit=limit, session=session,
                                         timeout=timeout)


def cluster_nodes(session=None) -> list[dict]:
    """The node records (id, address, alive, resources, available, labels)."""
    return runtime.backend.cluster_nodes(session)


def remove_node(node_id: str, timeout: float = 10.0) -> bool:
    """Take a node out at the head now (marked dead, its agent told to stop); raylite's
    own runtime only (the autoscaler's local provider)."""
    return _connected().request_head(P.REMOVE_NODE, {"node_id": node_id}, timeout=timeout)


def report_autoscaler(status: dict, decisions: list) -> None:
    """Store the autoscaler's status at the head and publish its decisions (raylite's
    own runtime only)."""
    _connected().send_head(P.AUTOSCALER_REPORT, {"status": status, "decisions": decisions})


def local_cluster() -> LocalCluster | None:
    """The cluster (head and node agents) that ``init()`` started in this process, or
    None (connected to one started elsewhere, to Ray, or not initialized)."""
    return driver._State.cluster


def start_cluster() -> LocalCluster:
    """A head of a new cluster (no nodes yet), for ``cluster_utils.Cluster``."""
    cluster = LocalCluster(new_session_id())
    cluster.start_head(wait_ready=True)
    return cluster


def query_nodes(address: str, token: str | None) -> list[dict]:
    """The node records of the cluster at ``address``, asked without joining it."""
    return driver.query_head(address, P.CLUSTER_INFO, token=token)["nodes"]


# ------------------------------------------------------------------ objects and tasks
def owned_objects(session=None) -> list[dict]:
    """The objects this process owns or borrows (state API records)."""
    return runtime.backend.owned_objects(session)


def stored_objects(session=None) -> list[dict]:
    """The objects in the stores of this host's nodes (on Ray: Ray's object list)."""
    return runtime.backend.stored_objects(session)


def flush_task_events(session=None) -> None:
    """Send this process's task records to the head now (a list of tasks right after a
    ``get`` sees them end)."""
    runtime.backend.flush_task_events(session)


# ------------------------------------------------------------------ events
def subscribe_events(topics: list[str], session=None):
    """A subscription to the cluster's event stream (``recv``, ``ping``, ``synced``,
    ``ended``, ``close``, as :class:`EventSubscription`): raylite's head publishes
    events; on Ray they are derived by polling Ray's state API."""
    return runtime.backend.subscribe_events(topics, session)


def run_shutdown_hooks() -> None:
    """Run (and keep) the hooks of :func:`add_shutdown_hook`; a failing hook is ignored
    (the Ray backend's ``shutdown`` calls it, raylite's own runs them itself)."""
    for hook in list(driver._State.shutdown_hooks):
        try:
            hook()
        except Exception:
            pass


class EventSubscription:
    """A subscriber socket on the head's event stream, for one reading thread.

    It has a ZeroMQ context of its own: the core's is destroyed at shutdown, and closing
    a socket that another thread polls (zmq_close is not thread-safe) can abort the
    process. :meth:`recv` and :meth:`close` belong to the reading thread; :meth:`ping`
    (proof that the subscription is connected: ZeroMQ's "slow joiner" misses what is
    published before) may be called from any.
    """

    def __init__(self, topics: list[str], session=None):
        import zmq

        from raylite.core.transport import Transport

        bad = [t for t in topics if t not in EVENT_TOPICS]
        if bad:
            raise ValueError(f"Unknown event topics {bad}; choose from {sorted(EVENT_TOPICS)}")
        self.session = _connected(session)
        host, port = self.session.head_addr.rsplit(":", 1)
        transport = self.session.transport
        self._transport = Transport(transport.token, transport.bind_host)
        self._sock = self._transport.connect(f"{host}:{int(port) + 1}", zmq.SUB)
        for t in topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, EVENT_TOPICS[t])
        self._sock.setsockopt(zmq.SUBSCRIBE, P.EV_PING)
        self._nonce = new_id()
        self.synced = threading.Event()  # set once our ping came back

    def ping(self) -> None:
        self.session.send_head(P.PING_EVENTS, {"nonce": self._nonce})

    def ended(self) -> bool:
        """The session it belongs to ended (``raylite.shutdown()``)."""
        return runtime.core is not self.session

    def recv(self, timeout_ms: int = 100) -> tuple[str, dict] | None:
        """The next ``(topic, body)``, or None when nothing (valid) came within
        ``timeout_ms``. Raises ConnectionError once the socket is unusable."""
        import zmq

        try:
            if not self._sock.poll(timeout_ms):
                return None
            frames = self._sock.recv_multipart(zmq.NOBLOCK)
        except zmq.ZMQError as e:
            raise ConnectionError(str(e)) from None
        try:
            mtype, body, _ = P.decode(frames, routed=False)
        except Exception:
            return None
        if mtype == P.EV_PING:
            if body.get("nonce") == self._nonce:
                self.synced.set()
            return None
        return _TOPIC_NAMES.get(mtype, mtype.decode()), body

    def close(self) -> None:
        self._sock.close(linger=0)
        self._transport.close(linger_ms=0)
