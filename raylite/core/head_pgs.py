"""The head's placement groups: all-or-nothing bundle reservation, removal."""

from __future__ import annotations

import logging

from raylite.core import protocol as P
from raylite.core import scheduler
from raylite.core.head_tables import (
    MAX_REMOVED_PGS,
    PlacementGroup,
)
from raylite.core.ledger import Pool

log = logging.getLogger("raylite.head")


class PlacementGroupsPart:
    """Placement-group handlers of the Head (``self`` is the Head)."""

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
