"""The head's state API, task table, drivers and cluster info."""

from __future__ import annotations

import logging
import time

from raylite.core import protocol as P
from raylite.core.head_tables import (
    MAX_TASK_RECORDS,
    task_info,
)

log = logging.getLogger("raylite.head")


class StatePart:
    """State, task-table, driver and cluster-info handlers of the Head (``self`` is the Head)."""

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
            groups.setdefault(r.demand_group(), []).append(r)
        for stale in self.backlogs.keys() - groups.keys():
            del self.backlogs[stale]
        out = []
        for group, reqs in groups.items():
            count = max(len(reqs), self.backlogs.get(group, 0))
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
            tid = r[P.TR_TASK_ID]
            rec = tasks.get(tid)
            if rec is None:
                rec = tasks[tid] = r
                if len(tasks) > MAX_TASK_RECORDS:
                    tasks.popitem(last=False)
            else:
                for i in range(P.TR_TASK_ID + 1, len(r)):
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
