"""The head's node and worker table: registration, heartbeats and liveness, worker deaths
and what their owners held."""

from __future__ import annotations

import logging
import time

from raylite.core import protocol as P
from raylite.core import scheduler
from raylite.core.head_tables import (
    DRIVER_TIMEOUT_S,
    MAX_DEAD_NODES,
    NODE_TIMEOUT_S,
    Bundle,
    Node,
    Worker,
)
from raylite.core.ledger import Pool

log = logging.getLogger("raylite.head")


class NodesPart:
    """Node and worker handlers of the Head (a part of it: ``self`` is the Head)."""

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

    def on_retire_idle(self, body: dict) -> None:
        """The node's zygote now forks workers with modules preloaded: replace its idle
        workers among ``pids`` (forked before) with new ones now, the leased ones when
        their lease comes back (``on_return_lease``); actors keep theirs."""
        node = self.nodes.get(body["node_id"])
        if node is None or not node.alive:
            return
        node.stale.update(body["pids"])
        for idle in node.idle.values():
            for w in [w for w in idle if w.pid in node.stale]:
                idle.remove(w)  # never granted again; it is dead once its exit comes
                self.kill_worker(w)
        self.top_up_pool(node)

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
            node.stale.discard(w.pid)  # a later worker may get the pid
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
