"""The head's tables: nodes, workers, pending requests, placement groups and actors, as
plain records the head's parts share (and the limits that keep them bounded)."""

from __future__ import annotations

import collections
import os
import time

from raylite.core import protocol as P
from raylite.core import scheduler
from raylite.core.ledger import GpuSet, Pool

NODE_TIMEOUT_S = float(os.environ.get("RAYLITE_NODE_TIMEOUT_S", "3.0"))
DRIVER_TIMEOUT_S = 15.0
MAX_TASK_RECORDS = 20000  # the task table keeps the most recent ones (as Ray's, bounded)
MAX_DEAD_ACTORS = 2000    # dead actors, removed groups and dead nodes kept for the state
MAX_REMOVED_PGS = 2000    # API; older ones are pruned, so churn never grows the head
MAX_DEAD_NODES = 200


def task_info(r: list) -> dict:
    """A task record (P.task_record) as the state API shows it (Ray's field names where
    they exist)."""
    actor_id, attempts = r[P.TR_ACTOR_ID], r[P.TR_ATTEMPTS] or 1
    if r[P.TR_END] is not None:
        state = "FAILED" if r[P.TR_ERROR] else "FINISHED"
    elif r[P.TR_SENT] is not None:
        state = "RUNNING"
    else:
        state = "PENDING_NODE_ASSIGNMENT"
    return {"task_id": r[P.TR_TASK_ID].hex(), "name": r[P.TR_NAME], "job_id": r[P.TR_JOB_ID],
            "actor_id": actor_id.hex() if actor_id else None,
            "type": "ACTOR_TASK" if actor_id else "NORMAL_TASK", "state": state,
            "node_id": r[P.TR_NODE_ID], "worker_id": r[P.TR_WORKER_ID],
            "submitted": r[P.TR_SUBMITTED], "sent": r[P.TR_SENT], "start": r[P.TR_START],
            "end": r[P.TR_END], "error": r[P.TR_ERROR], "attempts": attempts,
            "attempt_number": attempts - 1}


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
        self.stale: set[int] = set()  # pids forked before the node preloaded its modules
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

    def demand_group(self) -> tuple:
        """The requests one owner makes for one queue of tasks (or actors) of a shape."""
        return (self.owner, tuple(sorted(self.demand.items())), str(self.strategy),
                str(self.body.get("label_selector")), self.actor is not None)

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
