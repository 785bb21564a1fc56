"""The head's lease scheduler: pending requests placed on nodes or in placement-group
bundles, worker grants, blocked workers lending their CPUs."""

from __future__ import annotations

import logging

from raylite.core import protocol as P
from raylite.core import scheduler
from raylite.core.head_tables import (
    Node,
    Request,
    Worker,
)

log = logging.getLogger("raylite.head")


class LeasesPart:
    """Lease handlers and the scheduler loop of the Head (``self`` is the Head)."""

    def on_request_lease(self, body: dict) -> None:
        req = Request(body)
        self.pending.append(req)
        self.set_backlog(req.demand_group(), body.get("backlog") or 0,
                         body.get("outstanding") or ())

    def on_lease_backlog(self, body: dict) -> None:
        ids = {body["req_id"], *(body.get("outstanding") or ())}
        req = next((r for r in self.pending if r.req_id in ids), None)
        if req is not None:
            self.set_backlog(req.demand_group(), body["backlog"], ids)

    def set_backlog(self, group: tuple, queued: int, outstanding) -> None:
        """Record how many tasks an owner has queued behind a group of its lease
        requests. ``outstanding`` are the owner's requests still unanswered when it
        counted: each one already placed here takes a task off that queue when its grant
        arrives, so it is not counted again (else the autoscaler sees it twice and
        launches a node too many)."""
        if outstanding:
            waiting = {r.req_id for r in self.pending}
            queued -= sum(1 for rid in outstanding if rid not in waiting)
        self.backlogs[group] = max(0, queued)

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
        if w.pid in node.stale:  # forked before the node preloaded: replace it
            self.kill_worker(w)
            self.top_up_pool(node)
            return
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
        backlogs = self.backlogs
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
            if backlogs:  # the placed request takes one task off its owner's queue
                group = req.demand_group()
                if backlogs.get(group):
                    backlogs[group] -= 1
            if req.strategy == "SPREAD":
                ids = sorted(n.node_id for n in views.values())
                self.spread_counter = ids.index(node_id) + 1
        self.pending = keep
        if not keep:
            backlogs.clear()

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
