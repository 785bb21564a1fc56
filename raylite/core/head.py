"""The head: the cluster's controller (Ray's GCS plus the lease part of the raylets).

It keeps the node table, the workers of every node, the actor table and named actors;
it grants worker *leases* to owners for a resource shape (the scheduling decision), places
and restarts actors, and publishes events (actor state, owner deaths, worker output) on a
PUB socket at ``port + 1``. It never sees task payloads or results: those flow between
owners and workers directly.

Run: ``python -m raylite.core.head --port P --session S`` (the driver or the CLI does it).
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import signal
import sys
import time

import zmq

from raylite.core import protocol as P
from raylite.core import store
from raylite.core.head_actors import ActorsPart
from raylite.core.head_leases import LeasesPart
from raylite.core.head_nodes import NodesPart
from raylite.core.head_pgs import PlacementGroupsPart
from raylite.core.head_state import StatePart
from raylite.core.head_tables import (  # noqa: F401  (re-exported: tests and tools use them)
    DRIVER_TIMEOUT_S,
    MAX_DEAD_ACTORS,
    MAX_DEAD_NODES,
    MAX_REMOVED_PGS,
    MAX_TASK_RECORDS,
    NODE_TIMEOUT_S,
    Actor,
    Node,
    PlacementGroup,
    Request,
    Worker,
    task_info,
)
from raylite.core.osutil import die_with_parent, drain_fd, signal_wakeup_fd
from raylite.core.outbox import Outbox
from raylite.core.transport import Transport

log = logging.getLogger("raylite.head")



class Head(NodesPart, LeasesPart, ActorsPart, PlacementGroupsPart, StatePart):
    """The head process: one inbox, one event socket, and a handler per message type.
    Its concerns live in one part each (nodes and workers, leases, actors, placement
    groups, state and drivers); this class owns the sockets and the loop."""

    def __init__(self, port: int, session: str, token: str | None, bind_host: str):
        self.session = session
        self.transport = Transport(token, bind_host)
        self.inbox, self.addr = self.transport.bind(zmq.ROUTER, port)
        # XPUB: like PUB, and it tells us which topics someone listens to, so task events
        # are published only while a state-API subscriber (a widget) wants them
        self.pub, _ = self.transport.bind(zmq.XPUB, port + 1)
        self.subscriptions: collections.Counter = collections.Counter()
        self.outbox = Outbox(self.transport)
        self.nodes: dict[str, Node] = {}
        self.workers: dict[str, Worker] = {}
        self.pending: list[Request] = []
        self.backlogs: dict[tuple, int] = {}  # demand group -> tasks its owner has queued
        self.actors: dict[bytes, Actor] = {}
        self.named: dict[tuple, bytes] = {}
        self.pgs: dict[str, PlacementGroup] = {}
        self.pending_pgs: list[PlacementGroup] = []
        self.tasks: collections.OrderedDict = collections.OrderedDict()  # task_id -> record
        self.autoscaler: dict | None = None
        self.warned_shapes: set = set()
        self.drivers: dict[str, dict] = {}
        self.node_waiters: list[tuple[int, dict]] = []
        self.spread_counter = 0
        self.running = True
        self.last_refused_log = 0.0
        self.dropped = 0  # invalid messages dropped
        self.rejoins = 0
        self.dead_actors: collections.deque = collections.deque()  # oldest first
        self.removed_pgs: collections.deque = collections.deque()
        self.dead_nodes: collections.deque = collections.deque()
        # log connections refused for a missing or wrong token
        self.monitor = self.inbox.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL |
            zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        self.handlers = {
            P.REGISTER_NODE: self.on_register_node, P.HEARTBEAT: self.on_heartbeat,
            P.REGISTER_WORKER: self.on_register_worker, P.WORKER_EXITED: self.on_worker_exited,
            P.RETIRE_IDLE: self.on_retire_idle,
            P.REQUEST_LEASE: self.on_request_lease, P.CANCEL_LEASE: self.on_cancel_lease,
            P.LEASE_BACKLOG: self.on_lease_backlog,
            P.RETURN_LEASE: self.on_return_lease, P.WORKER_BLOCKED: self.on_worker_blocked,
            P.CREATE_ACTOR: self.on_create_actor, P.ACTOR_READY: self.on_actor_ready,
            P.GET_ACTOR_INFO: self.on_get_actor_info, P.KILL_ACTOR: self.on_kill_actor,
            P.REGISTER_DRIVER: self.on_register_driver, P.DRIVER_EXIT: self.on_driver_exit,
            P.CLUSTER_INFO: self.on_cluster_info, P.SHUTDOWN: self.on_shutdown,
            P.LOG: self.on_log, P.PING_EVENTS: self.on_ping_events,
            P.GET_STATE: self.on_get_state, P.TASK_EVENTS: self.on_task_events,
            P.REMOVE_NODE: self.on_remove_node, P.AUTOSCALER_REPORT: self.on_autoscaler_report,
            P.CREATE_PG: self.on_create_pg, P.REMOVE_PG: self.on_remove_pg,
            P.GET_PG: self.on_get_pg,
        }

    # ------------------------------------------------------------------ plumbing
    def send(self, addr: str, msg_type: bytes, body: dict) -> None:
        self.outbox.send(addr, P.encode(msg_type, body))

    def reply(self, body: dict, value=None, error=None) -> None:
        if body.get("reply_to"):
            self.send(body["reply_to"], P.REPLY, {"req_id": body.get("req_id"), "value": value,
                                                  "error": error})

    def publish(self, topic: bytes, body: dict) -> None:
        self.pub.send_multipart(P.encode(topic, body))

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.inbox, zmq.POLLIN)
        poller.register(self.pub, zmq.POLLIN)
        wake = signal_wakeup_fd()
        poller.register(wake, zmq.POLLIN)
        if self.monitor is not None:
            poller.register(self.monitor, zmq.POLLIN)
        last_check = time.monotonic()
        while self.running:
            ready = dict(poller.poll(100))
            if wake in ready:
                drain_fd(wake)
            if self.monitor is not None and self.monitor in ready:
                self.log_refused()
            if self.pub in ready:
                self.on_subscriptions()
            if self.inbox in ready:
                for _ in range(1000):
                    try:
                        frames = self.inbox.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self.dispatch(frames)
                try:
                    self.schedule()
                except Exception:  # a bug here must not stop the head
                    log.exception("head: error while scheduling")
            now = time.monotonic()
            if now - last_check > 0.25:
                last_check = now
                self.check_liveness(now)
        self.close()

    def dispatch(self, frames: list) -> None:
        """Decode, validate and handle one message; anything malformed, or of a type the
        head does not take, is logged and dropped before it can change any state."""
        try:
            mtype, handler, body, _ = P.route(frames, self.handlers, "the head")
        except P.InvalidMessage as e:
            self.dropped += 1
            log.warning("head: dropped an invalid message: %s", e)
            return
        try:
            handler(body)
        except Exception:
            log.exception("head: error handling %s", mtype.decode())

    def on_subscriptions(self) -> None:
        """XPUB passes up the first subscribe and the last unsubscribe of each topic."""
        while True:
            try:
                msg = self.pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg:
                self.subscriptions[msg[1:]] += 1 if msg[0] == 1 else -1

    @property
    def watching_tasks(self) -> bool:
        return self.subscriptions[P.EV_TASK] > 0 or self.subscriptions[b""] > 0

    def log_refused(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            now = time.monotonic()
            if now - self.last_refused_log < 10.0:  # a refused peer retries; log it once
                continue
            self.last_refused_log = now
            log.warning("refused a connection on %s: handshake failed (missing or wrong "
                        "cluster token); nothing it sent was read",
                        event.get("endpoint", b"").decode(errors="replace"))

    def close(self) -> None:
        if self.monitor is not None:
            self.inbox.disable_monitor()
            self.monitor.close(linger=0)
        self.outbox.close(linger_ms=300)
        self.inbox.close(linger=0)
        self.pub.close(linger=0)
        self.transport.close(linger_ms=0)
        try:
            os.rmdir(store.session_dir(self.session))
        except OSError:
            pass


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m raylite.core.head")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--session", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[raylite head] %(message)s")
    die_with_parent(signal.SIGTERM)
    try:
        head = Head(args.port, args.session, os.environ.get("RAYLITE_TOKEN"), args.host)
    except zmq.ZMQError as e:  # e.g. the port was taken; whoever started us may retry
        log.warning("cannot listen on %s:%s (and +1): %s", args.host, args.port, e)
        sys.exit(3)

    def on_term(*_):
        head.running = False
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(f"RAYLITE_HEAD_READY {head.addr}", flush=True)
    head.run()
    sys.exit(0)


if __name__ == "__main__":
    main()
