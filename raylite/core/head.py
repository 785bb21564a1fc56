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
from raylite.core import scheduler, store
from raylite.core.ledger import GpuSet, Pool
from raylite.core.osutil import die_with_parent, drain_fd, signal_wakeup_fd
from raylite.core.transport import Outbox, Transport

log = logging.getLogger("raylite.head")

NODE_TIMEOUT_S = float(os.environ.get("RAYLITE_NODE_TIMEOUT_S", "3.0"))
DRIVER_TIMEOUT_S = 15.0
MAX_TASK_RECORDS = 20000  # the task table keeps the most recent ones (as Ray's, bounded)
MAX_DEAD_ACTORS = 2000    # dead actors, removed groups and dead nodes kept for the state
MAX_REMOVED_PGS = 2000    # API; older ones are pruned, so churn never grows the head
MAX_DEAD_NODES = 200


def task_info(r: list) -> dict:
    """A task record as the state API shows it (Ray's field names where they exist)."""
    if r[9] is not None:
        state = "FAILED" if r[10] else "FINISHED"
    elif r[5] is not None:
        state = "RUNNING"
    else:
        state = "PENDING_NODE_ASSIGNMENT"
    return {"task_id": r[0].hex(), "name": r[1], "job_id": r[2],
            "actor_id": r[3].hex() if r[3] else None, "type": "ACTOR_TASK" if r[3]
            else "NORMAL_TASK", "state": state, "node_id": r[6], "worker_id": r[7],
            "submitted": r[4], "sent": r[5], "start": r[8], "end": r[9], "error": r[10],
            "attempts": r[P.TR_ATTEMPTS] or 1, "attempt_number": (r[P.TR_ATTEMPTS] or 1) - 1}


class Node:
    def __init__(self, body: dict):
        self.node_id = body["node_id"]
        self.addr = body["addr"]
        self.host = body.get("host", "127.0.0.1")
        self.pid = body.get("pid")
        self.total = dict(body["resources"])
        self.pool = Pool(self.total, f"node {self.node_id}")
        self.available = self.pool.available  # the same dict: views see every change
        self.labels = dict(body.get("labels", {}))
        self.alive = True
        self.transfers = 0  # objects pulled from other nodes
        self.store_used = 0
        self.store_capacity = 0
        self.last_seen = time.monotonic()
        self.started = time.time()
        self.idle_since: float | None = time.monotonic()
        self.idle: dict[str, list] = collections.defaultdict(list)  # env_key -> [Worker]
        self.waiting_spawn: dict[str, collections.deque] = collections.defaultdict(
            collections.deque)  # env_key -> grants waiting for a new worker
        self.spawning: collections.Counter = collections.Counter()
        self.warm = int(body.get("warm", 0))
        self.rejoin_sent = False
        self.spawning[""] = int(body.get("warm", 0))  # the agent forks its pool at start
        self.gpus = GpuSet(int(self.total.get("GPU", 0)))

    def view(self) -> scheduler.NodeView:
        return scheduler.NodeView(self.node_id, self.total, self.available, self.labels,
                                  self.alive)

    def info(self) -> dict:
        idle = time.monotonic() - self.idle_since if self.idle_since is not None else 0.0
        return {"node_id": self.node_id, "addr": self.addr, "host": self.host,
                "alive": self.alive, "resources": dict(self.total),
                "available": dict(self.available), "labels": dict(self.labels),
                "pid": self.pid, "transfers": self.transfers, "store_used": self.store_used,
                "store_capacity": self.store_capacity, "idle_s": idle,
                "ledger_violations": self.pool.violations,
                "node_type": self.labels.get("raylite.io/node-type"),
                "start_time": self.started}


class Worker:
    def __init__(self, body: dict):
        self.worker_id = body["worker_id"]
        self.node_id = body["node_id"]
        self.addr = body["addr"]
        self.core_addr = body["core_addr"]
        self.pid = body["pid"]
        self.env_key = body.get("env_key", "")
        self.state = "idle"  # idle | leased | actor | dead
        self.owner = None  # lease owner's core address
        self.held: dict = {}
        self.gpu_ids: tuple = ()
        self.bundle = None  # the placement group bundle its resources come from
        self.blocked = False
        self.actor = None


class Request:
    """A pending demand for a worker: a task lease or an actor placement."""

    def __init__(self, body: dict, actor=None):
        self.body = body
        self.req_id = body.get("req_id")
        self.demand = {k: float(v) for k, v in body["demand"].items() if v}
        strat = body.get("strategy", "DEFAULT")
        self.strategy = tuple(strat) if isinstance(strat, list) else strat
        self.selector = scheduler.parse_selector(body.get("label_selector"))
        self.env_vars = body.get("env_vars") or {}
        self.env_key = body.get("env_key", "")
        self.owner = body.get("owner")
        self.actor = actor
        self.warned = False
        self.since = time.monotonic()
        self.bundle = None

    @property
    def pg(self) -> tuple | None:
        """(pg_id, bundle_index, capture) when it runs in a placement group."""
        s = self.strategy
        return s[1:] if isinstance(s, tuple) and s[0] == "pg" else None

    def describe(self) -> dict:
        return {"kind": "actor" if self.actor else "task", "demand": dict(self.demand),
                "label_selector": self.body.get("label_selector"),
                "strategy": self.strategy if isinstance(self.strategy, str)
                else list(self.strategy), "since": self.since, "infeasible": self.warned,
                "owner": self.owner}


class Bundle:
    """One bundle of a placement group: resources reserved on a node, handed out to the
    tasks and actors that run in it."""

    def __init__(self, pg, index: int, resources: dict, selector: dict | None):
        self.pg = pg
        self.index = index
        self.resources = {k: float(v) for k, v in resources.items() if v}
        self.selector_text = selector or {}
        self.selector = scheduler.parse_selector(selector)
        self.node_id: str | None = None
        self.pool: Pool | None = None  # while placed
        self.available: dict = {}

    def info(self) -> dict:
        return {"bundle_index": self.index, "resources": dict(self.resources),
                "node_id": self.node_id, "available": dict(self.available),
                "label_selector": dict(self.selector_text)}


class PlacementGroup:
    def __init__(self, spec: dict):
        self.spec = spec
        self.pg_id = spec["pg_id"]
        self.name = spec.get("name") or ""
        self.strategy = spec["strategy"]
        self.owner = spec.get("owner")
        self.detached = spec.get("lifetime") == "detached"
        sels = spec.get("bundle_label_selector") or [None] * len(spec["bundles"])
        self.bundles = [Bundle(self, i, b, sel)
                        for i, (b, sel) in enumerate(zip(spec["bundles"], sels, strict=True))]
        self.state = "PENDING"
        self.created_at = time.time()
        self.since = time.monotonic()
        self.warned = False
        self.waiters: list = []

    def info(self) -> dict:
        return {"placement_group_id": self.pg_id, "name": self.name, "strategy": self.strategy,
                "state": self.state, "bundles": [b.info() for b in self.bundles],
                "created_at": self.created_at, "infeasible": self.warned}


class Actor:
    def __init__(self, spec: dict):
        self.spec = spec
        self.actor_id = spec["actor_id"]
        self.name = spec.get("name") or ""
        self.namespace = spec.get("namespace") or ""
        self.owner = spec["owner"]
        self.job_id = spec.get("job_id")
        self.detached = spec.get("lifetime") == "detached"
        self.restarts_left = spec.get("max_restarts", 0)
        self.state = "PENDING"
        self.worker = None
        self.error = None
        self.waiters: list = []
        self.num_restarts = 0
        strat = spec.get("strategy")
        self.pg_id = strat[1] if isinstance(strat, (list, tuple)) and strat[0] == "pg" else None

    def info(self) -> dict:
        w = self.worker
        return {"actor_id": self.actor_id, "state": self.state, "name": self.name,
                "namespace": self.namespace, "meta": self.spec["meta"],
                "addr": w.addr if w else None, "core_addr": w.core_addr if w else None,
                "node_id": w.node_id if w else None, "pid": w.pid if w else None,
                "worker_id": w.worker_id if w else None,
                "error": self.error, "class_name": self.spec["meta"].get("class_name"),
                "num_restarts": self.num_restarts, "job_id": self.job_id,
                "placement_group_id": self.pg_id}


class Head:
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

    # ------------------------------------------------------------------ nodes
    def on_register_node(self, body: dict) -> None:
        node = Node(body)
        node.labels.setdefault("raylite.io/node-id", node.node_id)
        self.nodes[node.node_id] = node
        self.publish(P.EV_NODE, {"node_id": node.node_id, "alive": True, "info": node.info()})
        self.answer_node_waiters()

    def answer_node_waiters(self) -> None:
        alive = sum(n.alive for n in self.nodes.values())
        keep = []
        for want, body in self.node_waiters:
            if alive >= want:
                self.reply(body, self.cluster_info())
            else:
                keep.append((want, body))
        self.node_waiters = keep

    def on_heartbeat(self, body: dict) -> None:
        if "node_id" in body:
            node = self.nodes.get(body["node_id"])
            if node is not None and not node.alive:
                # its heartbeats resumed after it was declared dead (a pause, a network
                # split): its workers are gone for the cluster, so it comes back as a
                # new, empty node, never as the old one
                if not node.rejoin_sent:
                    node.rejoin_sent = True
                    self.rejoins += 1
                    self.send(node.addr, P.REJOIN, {
                        "node_id": f"{node.node_id.split('~')[0]}~{self.rejoins}"})
                return
            if node is not None:
                node.last_seen = time.monotonic()
                node.transfers = body.get("transfers", 0)
                node.store_used = body.get("store_used", node.store_used)
                node.store_capacity = body.get("store_capacity", node.store_capacity)
        elif body.get("job_id") in self.drivers:
            self.drivers[body["job_id"]]["last_seen"] = time.monotonic()

    def check_liveness(self, now: float) -> None:
        for node in list(self.nodes.values()):
            if node.alive and now - node.last_seen > NODE_TIMEOUT_S:
                log.warning("node %s missed heartbeats for %.1fs: marking it dead",
                            node.node_id, now - node.last_seen)
                self.node_died(node)
        for job_id, d in list(self.drivers.items()):
            if now - d["last_seen"] > DRIVER_TIMEOUT_S:
                log.warning("driver %s stopped sending heartbeats: cleaning up", job_id)
                self.driver_gone(job_id)
        views = None
        for req in self.pending:
            if not req.warned and now - req.since > 2.0 and req.pg is None:
                views = views or [n.view() for n in self.nodes.values()]
                if not scheduler.feasible(views, req.demand, req.strategy, req.selector):
                    req.warned = True
                    self.publish(P.EV_PENDING, req.describe())
                    shape = (tuple(sorted(req.demand.items())),
                             str(req.body.get("label_selector")), bool(req.actor))
                    if shape in self.warned_shapes:
                        continue  # one warning per kind of demand, not per request
                    self.warned_shapes.add(shape)
                    what = "actor" if req.actor else "task"
                    if self.autoscaler is not None:
                        log.info("A %s needs %s (label_selector=%s): waiting for the "
                                 "autoscaler to add a node that can run it.", what,
                                 req.demand, req.body.get("label_selector"))
                    else:
                        log.warning("A %s needs %s (label_selector=%s) which no node of the "
                                    "cluster can provide; it (and others like it) stay "
                                    "pending until such a node joins.", what, req.demand,
                                    req.body.get("label_selector"))
        for pg in self.pending_pgs:
            if not pg.warned and now - pg.since > 2.0:
                views = views or [n.view() for n in self.nodes.values()]
                if scheduler.place_bundles(views, [b.resources for b in pg.bundles],
                                           pg.strategy, [b.selector for b in pg.bundles],
                                           use_total=True) is None:
                    pg.warned = True
                    log.warning("Placement group %s (%s, bundles %s) cannot be placed on any "
                                "node of the cluster; it stays pending until nodes that can "
                                "hold it join.", pg.name or pg.pg_id, pg.strategy,
                                [b.resources for b in pg.bundles])
                    self.publish(P.EV_PG, pg.info())
        working = {w.node_id for w in self.workers.values() if w.state != "idle"}
        for node in self.nodes.values():  # idle = nothing reserved on it, nothing running
            busy = node.alive and (node.node_id in working or any(
                abs(node.available.get(k, 0.0) - v) > 1e-9 for k, v in node.total.items()))
            if busy:
                node.idle_since = None
            elif node.idle_since is None:
                node.idle_since = time.monotonic()

    def node_died(self, node: Node) -> None:
        node.alive = False
        node.pool.zero()
        self.dead_nodes.append(node.node_id)
        while len(self.dead_nodes) > MAX_DEAD_NODES:
            old = self.nodes.get(self.dead_nodes.popleft())
            if old is not None and not old.alive:
                del self.nodes[old.node_id]
        for w in [w for w in self.workers.values() if w.node_id == node.node_id]:
            self.worker_died(w, f"its node {node.node_id} died")
        for grants in node.waiting_spawn.values():
            for req in grants:
                req.since = time.monotonic()
                self.pending.append(req)
        node.waiting_spawn.clear()
        for pg in list(self.pgs.values()):  # a group that lost a bundle is placed again
            if pg.state == "CREATED" and any(b.node_id == node.node_id for b in pg.bundles):
                self.unplace_pg(pg)
                pg.state = "RESCHEDULING"
                self.pending_pgs.append(pg)
                self.publish(P.EV_PG, pg.info())
        self.publish(P.EV_NODE, {"node_id": node.node_id, "alive": False, "info": node.info()})

    # ------------------------------------------------------------------ workers
    def on_register_worker(self, body: dict) -> None:
        w = Worker(body)
        node = self.nodes.get(w.node_id)
        if node is None or not node.alive:
            return  # its node is gone; the worker exits with its agent
        self.workers[w.worker_id] = w
        node.spawning[w.env_key] = max(0, node.spawning[w.env_key] - 1)
        waiting = node.waiting_spawn.get(w.env_key)
        if waiting:
            self.grant(node, waiting.popleft(), w)
        else:
            node.idle[w.env_key].append(w)

    def on_worker_exited(self, body: dict) -> None:
        node_id, pid = body["node_id"], body["pid"]
        for w in self.workers.values():
            if w.node_id == node_id and w.pid == pid:
                self.worker_died(w, body.get("reason", "it exited"))
                return
        node = self.nodes.get(node_id)
        if node is not None:  # it died before registering
            node.spawning[body["env_key"]] = max(0, node.spawning[body["env_key"]] - 1)

    def worker_died(self, w: Worker, reason: str) -> None:
        if w.state == "dead":
            return
        node = self.nodes.get(w.node_id)
        prev = w.state
        w.state = "dead"
        self.workers.pop(w.worker_id, None)
        if node is not None:
            if w in node.idle.get(w.env_key, ()):
                node.idle[w.env_key].remove(w)
            self.release(node, w)
        if prev == "leased" and w.owner:
            self.send(w.owner, P.WORKER_DIED, {"worker_id": w.worker_id, "reason": reason})
        self.outbox.forget(w.addr)
        if w.actor is not None:
            self.actor_worker_died(w.actor, reason)
        self.publish(P.EV_OWNER_DIED, {"core_addr": w.core_addr})
        self.owner_gone(w.core_addr)

    def owner_gone(self, core_addr: str) -> None:
        """A process that may own leases and actors is gone: reclaim what it held."""
        for w in list(self.workers.values()):
            if w.state == "leased" and w.owner == core_addr:
                self.kill_worker(w)
        self.pending = [r for r in self.pending if r.owner != core_addr or r.actor]
        for a in list(self.actors.values()):
            if a.owner == core_addr and not a.detached and a.state != "DEAD":
                a.restarts_left = 0
                self.kill_actor(a, "its owner died")
        for pg in list(self.pgs.values()):
            if pg.owner == core_addr and not pg.detached and pg.state != "REMOVED":
                self.remove_pg(pg)

    def kill_worker(self, w: Worker) -> None:
        node = self.nodes.get(w.node_id)
        if node is not None and node.alive:
            self.send(node.addr, P.KILL_WORKER, {"worker_id": w.worker_id, "pid": w.pid})

    def pool(self, node: Node, bundle: Bundle | None) -> Pool | None:
        """The ledger a worker draws from: its bundle's or its node's (None: gone)."""
        if bundle is not None:
            return bundle.pool if bundle.pg.state == "CREATED" else None
        return node.pool if node.alive else None

    def release(self, node: Node, w: Worker) -> None:
        pool = self.pool(node, w.bundle)
        if pool is not None:
            held = dict(w.held)
            if w.blocked:  # its CPUs are lent out already: returning them again would
                held.pop("CPU", None)  # count them twice
            pool.give(held)
        node.gpus.give(w.gpu_ids, w.held.get("GPU", 0.0))
        w.blocked = False
        w.held = {}
        w.gpu_ids = ()
        w.bundle = None

    # ------------------------------------------------------------------ leases
    def on_request_lease(self, body: dict) -> None:
        self.pending.append(Request(body))

    def on_lease_backlog(self, body: dict) -> None:
        for r in self.pending:
            if r.req_id == body["req_id"]:
                r.body["backlog"] = body["backlog"]
                return

    def on_cancel_lease(self, body: dict) -> None:
        rid = body["req_id"]
        self.pending = [r for r in self.pending if r.req_id != rid]
        for node in self.nodes.values():
            for _env_key, grants in node.waiting_spawn.items():
                for req in list(grants):
                    if req.req_id == rid:
                        grants.remove(req)
                        self.unreserve(node, req)

    def on_return_lease(self, body: dict) -> None:
        w = self.workers.get(body["worker_id"])
        if w is None or w.state != "leased":
            return
        node = self.nodes[w.node_id]
        self.release(node, w)
        w.state, w.owner, w.blocked = "idle", None, False
        node.idle[w.env_key].append(w)

    def on_worker_blocked(self, body: dict) -> None:
        w = self.workers.get(body["worker_id"])
        if w is None or w.state != "leased" or w.blocked == body["blocked"]:
            return
        pool = self.pool(self.nodes[w.node_id], w.bundle)
        cpus = w.held.get("CPU", 0.0)
        w.blocked = body["blocked"]
        # a task blocked in get() lends its CPU out, so nested tasks cannot deadlock;
        # when it resumes it takes it back (what is in use meanwhile becomes debt: Ray
        # briefly oversubscribes)
        if pool is not None:
            if w.blocked:
                pool.lend(cpus)
            else:
                pool.reclaim(cpus)

    def schedule(self) -> None:
        if self.pending_pgs:
            self.schedule_pgs()
        if not self.pending:
            return
        views = {nid: n.view() for nid, n in self.nodes.items()}
        keep = []
        failed: set = set()
        for req in self.pending:
            if req.pg is not None:
                if not self.schedule_in_pg(req):
                    keep.append(req)
                continue
            shape = (tuple(sorted(req.demand.items())), str(req.strategy),
                     str(req.body.get("label_selector")))
            if shape in failed:
                keep.append(req)
                continue
            node_id = scheduler.select_node(self.views_for(views, req.demand), req.demand,
                                            req.strategy, req.selector,
                                            req.body.get("node_id"), self.spread_counter)
            if node_id is None or not self.place(self.nodes[node_id], req):
                failed.add(shape)
                keep.append(req)
                continue
            if req.strategy == "SPREAD":
                ids = sorted(n.node_id for n in views.values())
                self.spread_counter = ids.index(node_id) + 1
        self.pending = keep

    def schedule_in_pg(self, req: Request) -> bool:
        """Place a request inside its placement group; False while it must wait."""
        pg_id, index, _capture = req.pg
        pg = self.pgs.get(pg_id)
        if pg is None or pg.state == "REMOVED":
            self.refuse(req, f"its placement group {pg_id} was removed (or never existed)")
            return True
        if pg.state != "CREATED":
            return False
        if index >= len(pg.bundles):
            self.refuse(req, f"placement_group_bundle_index={index} but the placement group "
                             f"has {len(pg.bundles)} bundles")
            return True
        bundles = pg.bundles if index < 0 else [pg.bundles[index]]
        for b in bundles:
            node = self.nodes.get(b.node_id)
            if node is not None and node.alive and scheduler.fits(b.available, req.demand) \
                    and scheduler.labels_match(node.labels, req.selector):
                req.bundle = b
                if self.place(node, req):
                    return True
                req.bundle = None
        return False

    def refuse(self, req: Request, reason: str) -> None:
        """A request that can never run: fail it at its owner."""
        error = ValueError(f"Cannot schedule this {'actor' if req.actor else 'task'}: {reason}.")
        if req.actor is not None:
            req.actor.restarts_left = 0
            req.actor.error = str(error)
            self.set_actor_state(req.actor, "DEAD")
        elif req.body.get("reply_to"):
            self.send(req.body["reply_to"], P.LEASE_GRANTED, {"req_id": req.req_id,
                                                               "error": error})

    def views_for(self, views: dict, demand: dict) -> list:
        """The scheduler's node views for ``demand``: for a GPU request, a node offers
        what one GPU has free (a fraction) or its wholly free GPUs, never a sum of
        fractions spread over several GPUs."""
        amount = demand.get("GPU", 0.0)
        if amount <= 0:
            return list(views.values())
        out = []
        for nid, v in views.items():
            cap = self.nodes[nid].gpus.capacity_for(amount)
            avail = dict(v.available, GPU=min(v.available.get("GPU", 0.0), cap))
            out.append(scheduler.NodeView(v.node_id, v.total, avail, v.labels, v.alive))
        return out

    def place(self, node: Node, req: Request) -> bool:
        """Reserve ``req``'s resources on ``node`` and give it an idle or new worker;
        False (nothing reserved) when no single GPU of the node has room for it."""
        gpu_ids = node.gpus.take(req.demand.get("GPU", 0.0))
        if gpu_ids is None:  # no one GPU has room (the scheduler's views said so too)
            return False
        (req.bundle.pool if req.bundle is not None else node.pool).take(req.demand)
        req.gpu_ids = gpu_ids
        idle = node.idle.get(req.env_key)
        if idle:
            self.grant(node, req, idle.pop())
        else:
            waiting = node.waiting_spawn[req.env_key]
            waiting.append(req)
            if node.spawning[req.env_key] < len(waiting):
                self.spawn(node, req.env_key, req.env_vars)
        self.top_up_pool(node)
        return True

    def unreserve(self, node: Node, req: Request) -> None:
        pool = self.pool(node, req.bundle)
        if pool is not None:
            pool.give(req.demand)
        node.gpus.give(getattr(req, "gpu_ids", ()), req.demand.get("GPU", 0.0))
        req.gpu_ids = ()

    def spawn(self, node: Node, env_key: str, env_vars: dict) -> None:
        node.spawning[env_key] += 1
        self.send(node.addr, P.SPAWN_WORKER, {"env_key": env_key, "env_vars": env_vars})

    def top_up_pool(self, node: Node) -> None:
        """Keep ``node.warm`` idle default workers so the next lease needs no spawn."""
        have = len(node.idle.get("", ())) + node.spawning[""] - len(node.waiting_spawn[""])
        for _ in range(node.warm - have):
            self.spawn(node, "", {})

    def grant(self, node: Node, req: Request, w: Worker) -> None:
        w.held = dict(req.demand)
        w.gpu_ids = getattr(req, "gpu_ids", ())
        w.bundle = req.bundle
        if req.actor is not None:
            self.start_actor(req.actor, w)
            return
        w.state, w.owner = "leased", req.owner
        self.send(req.body["reply_to"], P.LEASE_GRANTED, {
            "req_id": req.req_id, "worker_id": w.worker_id, "addr": w.addr,
            "core_addr": w.core_addr, "node_id": w.node_id, "gpu_ids": w.gpu_ids})

    # ------------------------------------------------------------------ actors
    def on_create_actor(self, spec: dict) -> None:
        name, ns = spec.get("name"), spec.get("namespace") or ""
        if name:
            existing = self.named.get((ns, name))
            if existing is not None and self.actors[existing].state != "DEAD":
                if spec.get("get_if_exists"):
                    self.reply(spec, self.actors[existing].info())
                else:
                    self.reply(spec, error=ValueError(
                        f"An actor named {name!r} already exists in namespace {ns!r}; pick "
                        "another name, or pass get_if_exists=True to reuse it."))
                return
        actor = Actor(spec)
        self.actors[actor.actor_id] = actor
        if name:
            self.named[(ns, name)] = actor.actor_id
            self.reply(spec, actor.info())
        self.pending.append(Request(spec, actor=actor))

    def start_actor(self, actor: Actor, w: Worker) -> None:
        w.state, w.actor, w.owner = "actor", actor, actor.owner
        actor.worker = w
        spec = actor.spec
        body = {k: spec[k] for k in ("actor_id", "cls", "args", "meta", "max_concurrency",
                                     "job_id", "name", "sys_path")}
        strat = spec.get("strategy")
        pg = list(strat[1:]) if isinstance(strat, (list, tuple)) and strat[0] == "pg" else None
        self.send(w.addr, P.BECOME_ACTOR, dict(body, gpu_ids=w.gpu_ids, resources=dict(w.held),
                                               placement_group=pg))

    def on_actor_ready(self, body: dict) -> None:
        actor = self.actors.get(body["actor_id"])
        if actor is None or actor.worker is None:
            return
        if body.get("error") is not None:
            actor.restarts_left = 0
            actor.error = body["error"]
            self.kill_worker(actor.worker)
            self.set_actor_state(actor, "DEAD")
            return
        w = actor.worker
        if not actor.spec.get("hold_cpu"):
            # Ray: an actor needs 1 CPU to be placed but holds 0 while it runs
            pool = self.pool(self.nodes[w.node_id], w.bundle)
            cpus = w.held.pop("CPU", 0.0)
            if pool is not None:
                pool.give({"CPU": cpus})
        self.set_actor_state(actor, "ALIVE")

    def set_actor_state(self, actor: Actor, state: str) -> None:
        actor.state = state
        info = actor.info()
        self.publish(P.EV_ACTOR, info)
        if state == "DEAD":
            key = (actor.namespace, actor.name)
            if actor.name and self.named.get(key) == actor.actor_id:
                del self.named[key]  # the name is free again
            self.dead_actors.append(actor.actor_id)
            while len(self.dead_actors) > MAX_DEAD_ACTORS:
                old = self.actors.get(self.dead_actors.popleft())
                if old is not None and old.state == "DEAD" and not old.waiters:
                    del self.actors[old.actor_id]
        if state in ("ALIVE", "DEAD"):
            for body in actor.waiters:
                self.reply(body, info)
            actor.waiters = []

    def actor_worker_died(self, actor: Actor, reason: str) -> None:
        actor.worker = None
        if actor.state == "DEAD":
            return
        if actor.restarts_left != 0 and actor.error is None:
            if actor.restarts_left > 0:
                actor.restarts_left -= 1
            actor.num_restarts += 1
            self.set_actor_state(actor, "RESTARTING")
            self.pending.append(Request(actor.spec, actor=actor))
        else:
            actor.error = actor.error or f"its worker process died ({reason})"
            self.set_actor_state(actor, "DEAD")

    def on_get_actor_info(self, body: dict) -> None:
        if body.get("name") is not None:
            aid = self.named.get((body.get("namespace") or "", body["name"]))
            actor = self.actors.get(aid) if aid else None
            if actor is None or actor.state == "DEAD":
                self.reply(body, error=ValueError(
                    f"Failed to look up actor with name {body['name']!r} in namespace "
                    f"{body.get('namespace') or ''!r}: no such live actor."))
                return
        else:
            actor = self.actors.get(body["actor_id"])
            if actor is None:
                self.reply(body, {"state": "DEAD", "error": "unknown actor"})
                return
        if body.get("wait") and actor.state not in ("ALIVE", "DEAD"):
            actor.waiters.append(body)
        else:
            self.reply(body, actor.info())

    def on_kill_actor(self, body: dict) -> None:
        actor = self.actors.get(body["actor_id"])
        if actor is None or actor.state == "DEAD":
            return
        if body.get("no_restart", True):
            actor.restarts_left = 0
        if body.get("graceful"):  # its owner sends it a terminate call after its others
            actor.error = ("The actor was terminated because all handles to it went out "
                           "of scope.")
            return
        self.kill_actor(actor, "it was killed with raylite.kill")

    def kill_actor(self, actor: Actor, reason: str) -> None:
        if actor.worker is not None:
            if actor.restarts_left == 0:
                actor.error = f"The actor died because {reason}."
            self.kill_worker(actor.worker)
        else:
            self.pending = [r for r in self.pending if r.actor is not actor]
            for node in self.nodes.values():
                for grants in node.waiting_spawn.values():
                    for req in list(grants):
                        if req.actor is actor:
                            grants.remove(req)
                            self.unreserve(node, req)
            actor.error = f"The actor died because {reason}."
            self.set_actor_state(actor, "DEAD")

    # ------------------------------------------------------------------ placement groups
    def on_create_pg(self, spec: dict) -> None:
        name = spec.get("name")
        if name and any(p.name == name and p.state != "REMOVED" for p in self.pgs.values()):
            self.reply(spec, error=ValueError(
                f"A placement group named {name!r} already exists; pick another name."))
            return
        pg = PlacementGroup(spec)
        self.pgs[pg.pg_id] = pg
        self.pending_pgs.append(pg)
        self.reply(spec, pg.info())
        self.publish(P.EV_PG, pg.info())

    def schedule_pgs(self) -> None:
        """Reserve bundles for pending groups, in creation order, all or nothing."""
        keep = []
        for pg in self.pending_pgs:
            if pg.state == "REMOVED":
                continue
            views = [n.view() for n in self.nodes.values()]
            where = scheduler.place_bundles(views, [b.resources for b in pg.bundles],
                                            pg.strategy, [b.selector for b in pg.bundles])
            if where is None:
                keep.append(pg)
                continue
            for b, nid in zip(pg.bundles, where, strict=True):
                node = self.nodes[nid]
                b.node_id = nid
                b.pool = Pool(b.resources, f"bundle {b.index} of {pg.pg_id}")
                b.available = b.pool.available
                node.pool.take(b.resources)
            pg.state = "CREATED"
            info = pg.info()
            for body in pg.waiters:
                self.reply(body, info)
            pg.waiters = []
            self.publish(P.EV_PG, info)
        self.pending_pgs = keep

    def unplace_pg(self, pg: PlacementGroup) -> None:
        """Give the bundles' reservations back to their nodes and stop what runs in them."""
        for w in list(self.workers.values()):
            if w.bundle is not None and w.bundle.pg is pg:
                if w.actor is not None:
                    w.actor.restarts_left = 0 if pg.state == "REMOVED" else w.actor.restarts_left
                    self.kill_actor(w.actor, f"its placement group {pg.pg_id} was removed")
                else:
                    self.kill_worker(w)
                node = self.nodes.get(w.node_id)
                if node is not None:  # the bundle's share goes back whole, below
                    node.gpus.give(w.gpu_ids, w.held.get("GPU", 0.0))
                w.bundle, w.held, w.gpu_ids, w.blocked = None, {}, (), False
        for node in self.nodes.values():
            for grants in node.waiting_spawn.values():
                for req in list(grants):
                    if req.bundle is not None and req.bundle.pg is pg:
                        grants.remove(req)
                        req.bundle = None
                        self.pending.append(req)
        for b in pg.bundles:
            node = self.nodes.get(b.node_id)
            if node is not None and node.alive:
                node.pool.give(b.resources)
            b.node_id, b.pool, b.available = None, None, {}

    def remove_pg(self, pg: PlacementGroup) -> None:
        was_placed = pg.state == "CREATED"
        pg.state = "REMOVED"
        self.removed_pgs.append(pg.pg_id)
        while len(self.removed_pgs) > MAX_REMOVED_PGS:
            old = self.pgs.get(self.removed_pgs.popleft())
            if old is not None and old.state == "REMOVED" and not old.waiters:
                del self.pgs[old.pg_id]
        if was_placed:
            self.unplace_pg(pg)
        self.pending_pgs = [p for p in self.pending_pgs if p is not pg]
        info = pg.info()
        for body in pg.waiters:
            self.reply(body, info)
        pg.waiters = []
        self.publish(P.EV_PG, info)

    def on_remove_pg(self, body: dict) -> None:
        pg = self.pgs.get(body["pg_id"])
        if pg is not None and pg.state != "REMOVED":
            self.remove_pg(pg)
        self.reply(body, True)

    def on_get_pg(self, body: dict) -> None:
        if body.get("name") is not None:
            pg = next((p for p in self.pgs.values()
                       if p.name == body["name"] and p.state != "REMOVED"), None)
        else:
            pg = self.pgs.get(body["pg_id"])
        if pg is None:
            self.reply(body, None)
        elif body.get("wait") and pg.state not in ("CREATED", "REMOVED"):
            pg.waiters.append(body)
        else:
            self.reply(body, pg.info())

    # ------------------------------------------------------------------ state
    def on_get_state(self, body: dict) -> None:
        """Answer the state API: the sections asked for (all by default)."""
        want = set(body.get("sections") or ("nodes", "workers", "actors", "placement_groups",
                                            "tasks", "demand", "autoscaler"))
        out: dict = {"time": time.time()}
        if "nodes" in want:
            out["nodes"] = [n.info() for n in self.nodes.values()]
        if "workers" in want:
            out["workers"] = [{
                "worker_id": w.worker_id, "node_id": w.node_id, "pid": w.pid, "state": w.state,
                "actor_id": w.actor.actor_id.hex() if w.actor else None,
                "resources": dict(w.held), "placement_group_id": w.bundle.pg.pg_id
                if w.bundle else None} for w in self.workers.values()]
        if "actors" in want:
            out["actors"] = [a.info() for a in self.actors.values()]
        if "placement_groups" in want:
            out["placement_groups"] = [p.info() for p in self.pgs.values()]
        if "tasks" in want:
            limit = body.get("limit") or len(self.tasks)
            out["tasks"] = [task_info(r) for r in list(self.tasks.values())[-limit:]]
        if "demand" in want:
            out["demand"] = {"requests": self.demand_requests(),
                             "placement_groups": [p.info() for p in self.pending_pgs]}
        if "autoscaler" in want:
            out["autoscaler"] = self.autoscaler
        self.reply(body, out)

    def demand_requests(self) -> list[dict]:
        """Pending requests for the autoscaler. An owner asks for a few leases at a time
        for a queue of tasks of one shape, and says how long that queue is (its backlog,
        as Ray's lease requests do): each group of its requests carries ``count`` = the
        larger of the two, so a long queue is seen as the demand it is."""
        groups: dict = {}
        for r in self.pending:
            if r.pg is not None:
                continue
            key = (r.owner, tuple(sorted(r.demand.items())), str(r.strategy),
                   str(r.body.get("label_selector")), r.actor is not None)
            groups.setdefault(key, []).append(r)
        out = []
        for reqs in groups.values():
            backlog = max(int(r.body.get("backlog") or 0) for r in reqs)
            count = max(len(reqs), backlog)
            for i, r in enumerate(reqs):
                d = r.describe()
                d["count"] = count - (len(reqs) - 1) if i == 0 else 1
                out.append(d)
        return out

    def on_task_events(self, body: dict) -> None:
        """Fold a batch of task records (P.task_record) from an owner into the task
        table; fields the owner did not know yet are None and keep what the table has."""
        changed = []
        tasks = self.tasks
        for r in body["records"]:
            tid = r[0]
            rec = tasks.get(tid)
            if rec is None:
                rec = tasks[tid] = r
                if len(tasks) > MAX_TASK_RECORDS:
                    tasks.popitem(last=False)
            else:
                for i in range(1, len(r)):
                    if r[i] is not None:
                        rec[i] = r[i]
            changed.append(rec)
        if self.watching_tasks:
            self.publish(P.EV_TASK, {"events": [task_info(r) for r in changed]})

    def on_remove_node(self, body: dict) -> None:
        """Take a node out now (the autoscaler terminating it): it is marked dead and its
        agent stops (which kills its workers and frees its store)."""
        node = self.nodes.get(body["node_id"])
        if node is not None and node.alive:
            self.send(node.addr, P.SHUTDOWN, {})
            self.node_died(node)
        self.reply(body, node is not None)

    def on_autoscaler_report(self, body: dict) -> None:
        self.autoscaler = body["status"]
        self.publish(P.EV_AUTOSCALER, body)

    # ------------------------------------------------------------------ drivers
    def on_register_driver(self, body: dict) -> None:
        self.drivers[body["job_id"]] = {"core_addr": body["core_addr"],
                                        "last_seen": time.monotonic()}
        want = body.get("expect_nodes", 0)
        if sum(n.alive for n in self.nodes.values()) >= want:
            self.reply(body, self.cluster_info())
        else:
            self.node_waiters.append((want, body))

    def on_driver_exit(self, body: dict) -> None:
        self.driver_gone(body["job_id"])

    def driver_gone(self, job_id: str) -> None:
        d = self.drivers.pop(job_id, None)
        if d is not None:
            self.publish(P.EV_OWNER_DIED, {"core_addr": d["core_addr"]})
            self.owner_gone(d["core_addr"])

    def cluster_info(self) -> dict:
        return {"nodes": [n.info() for n in self.nodes.values()], "session": self.session,
                "head_addr": self.addr,
                "actors": [a.info() for a in self.actors.values()],
                "workers": [{"worker_id": w.worker_id, "node_id": w.node_id, "pid": w.pid,
                             "state": w.state, "actor_id": w.actor.actor_id if w.actor else None}
                            for w in self.workers.values()],
                "pending": len(self.pending)}

    def on_cluster_info(self, body: dict) -> None:
        self.reply(body, self.cluster_info())

    def on_ping_events(self, body: dict) -> None:
        self.publish(P.EV_PING, body)

    def on_log(self, body: dict) -> None:
        self.publish(P.EV_LOG, body)

    def on_shutdown(self, body: dict) -> None:
        for node in self.nodes.values():
            if node.alive:
                self.send(node.addr, P.SHUTDOWN, {})
        self.reply(body, True)
        self.running = False


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
