"""raylite's state records read from Ray: what ``raylite.util.state``, the widgets and
the libraries get from ``runtime_api.cluster_state`` / ``cluster_nodes`` /
``subscribe_events``, built from what Ray's GCS keeps (the node table with labels,
``ray.nodes()``; the placement group table; the actor and worker tables) and, for tasks
and objects, Ray's state API (``ray.util.state``), which the Ray dashboard serves: on a
cluster started without one (``ray start --include-dashboard=false``) the ``tasks``
section holds the tasks that ran, from Ray's timeline, and ``list_objects`` raises Ray's
error.

Differences from raylite's own runtime: there is no event stream to subscribe to in
Ray, so :class:`PolledEvents` derives node, actor, placement group and task events by
polling Ray's state every half second; ``demand`` lists only placement groups that wait
(Ray's pending task demand is its autoscaler's); ``autoscaler`` is None (Ray's
autoscaler reports through ``ray status``, not read here); task records come from Ray's
task events, which lag the tasks by about a second.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import ray

from raylite.backends.ray_backend.session import ensure
from raylite.core import runtime

NO_AUTOSCALER = ("no autoscaler status on the Ray backend: raylite does not read Ray's "
                 "autoscaler (see 'ray status')")
ALL = ("nodes", "workers", "actors", "placement_groups", "tasks", "demand", "autoscaler")
_TASK_STATES = {"FINISHED": "FINISHED", "FAILED": "FAILED", "RUNNING": "RUNNING"}


def _records(items) -> list[dict]:
    return [dataclasses.asdict(i) if dataclasses.is_dataclass(i) else dict(i) for i in items]


def _ms(v) -> float | None:
    return v / 1000.0 if v else None


def node_records() -> list[dict]:
    """Ray's nodes as raylite's node records."""
    from raylite.backends.ray_backend.tasks import _available_per_node

    available = _available_per_node()
    out = []
    for n in ray.nodes():
        res = {k: v for k, v in n["Resources"].items() if not k.startswith("node:")}
        avail = {k: v for k, v in available.get(n["NodeID"], {}).items()
                 if not k.startswith("node:")} if n["Alive"] else {}
        out.append({"node_id": n["NodeID"], "addr": f"{n['NodeManagerAddress']}:"
                    f"{n.get('NodeManagerPort', 0)}", "host": n.get("NodeManagerHostname"),
                    "alive": n["Alive"], "resources": res, "available": avail,
                    "labels": dict(n.get("Labels") or {}), "pid": None, "transfers": 0,
                    "store_used": res.get("object_store_memory", 0.0) -
                    avail.get("object_store_memory", res.get("object_store_memory", 0.0)),
                    "store_capacity": res.get("object_store_memory"), "idle_s": 0.0,
                    "ledger_violations": 0, "node_type": None, "start_time": None})
    return out


def actor_records() -> list[dict]:
    """The GCS's actor table as raylite's actor records (the namespaces of named actors
    from ``ray.util.list_named_actors``: the table leaves them out)."""
    from ray._private import state

    namespaces = {d["name"]: d["namespace"]
                  for d in ray.util.list_named_actors(all_namespaces=True)}
    out = []
    for a in state.actors().values():
        where = a.get("Address") or {}
        name = a.get("Name") or ""
        out.append({"actor_id": a["ActorID"], "state": a["State"], "name": name,
                    "namespace": namespaces.get(name, ""), "node_id": where.get("NodeID"),
                    "pid": a.get("Pid") or None, "worker_id": None,
                    "error": a.get("DeathCause") or None, "class_name": a.get("ActorClassName"),
                    "num_restarts": int(a.get("NumRestarts") or 0), "job_id": a.get("JobID"),
                    "placement_group_id": a.get("PlacementGroupID")})
    return out


def worker_records(actors: list[dict]) -> list[dict]:
    """Ray's worker processes (the GCS's table) with the actor each hosts."""
    from ray._private import state

    by_pid = {a["pid"]: a for a in actors if a["pid"] and a["state"] == "ALIVE"}
    out = []
    for worker_id, w in state.state.workers().items():
        out.append({"worker_id": worker_id, "node_id": w.get("node_id"),
                    "pid": w.get("pid"), "state": "idle", "actor_id": None,
                    "resources": {}, "placement_group_id": None})
    for a in by_pid.values():  # the table does not say which worker hosts which actor
        out.append({"worker_id": f"actor-{a['actor_id']}", "node_id": a["node_id"],
                    "pid": a["pid"], "state": "actor", "actor_id": a["actor_id"],
                    "resources": {}, "placement_group_id": a["placement_group_id"]})
    return out


def task_records(limit: int | None, where: dict) -> list[dict]:
    """Ray's tasks from its state API, or, when no dashboard serves that, the tasks that
    ran from Ray's timeline (``ray.timeline()``: finished tasks only, no pending ones)."""
    from ray.util import state as ray_state

    try:
        tasks = [_task(t) for t in _records(ray_state.list_tasks(
            limit=limit or 10000, detail=True, **where))]
    except Exception:  # no dashboard: Ray's state API server is not running
        tasks = timeline_records()
    tasks.sort(key=lambda r: r["submitted"] or r["start"] or 0.0)
    return tasks[-limit:] if limit else tasks


def timeline_records() -> list[dict]:
    """Task records from the execution spans of ``ray.timeline()``."""
    node_of_ip = {n["NodeManagerAddress"]: n["NodeID"] for n in ray.nodes()}
    out = []
    for e in ray.timeline():
        cat = e.get("cat") or ""
        if not cat.startswith("task::") or e.get("ph") != "X":
            continue
        name = cat[len("task::"):]
        start = e["ts"] / 1e6
        out.append({"task_id": (e.get("args") or {}).get("task_id"), "name": name,
                    "job_id": None, "actor_id": None,
                    "type": "ACTOR_TASK" if "." in name else "NORMAL_TASK",
                    "state": "FINISHED", "node_id": node_of_ip.get(e.get("pid")),
                    "worker_id": str(e.get("tid", "")).removeprefix("worker:"),
                    "submitted": start, "sent": start, "start": start,
                    "end": start + e.get("dur", 0.0) / 1e6, "error": None, "attempts": 1,
                    "attempt_number": 0})
    return out


def _task(t: dict) -> dict:
    attempts = int(t.get("attempt_number") or 0) + 1
    state = _TASK_STATES.get(t["state"], "PENDING_NODE_ASSIGNMENT")
    return {"task_id": t["task_id"], "name": t.get("name") or t.get("func_or_class_name"),
            "job_id": t.get("job_id"), "actor_id": t.get("actor_id"),
            "type": t.get("type") or "NORMAL_TASK", "state": state,
            "node_id": t.get("node_id"), "worker_id": t.get("worker_id"),
            "submitted": _ms(t.get("creation_time_ms")), "sent": _ms(t.get("start_time_ms")),
            "start": _ms(t.get("start_time_ms")), "end": _ms(t.get("end_time_ms")),
            "error": t.get("error_message") or t.get("error_type"), "attempts": attempts,
            "attempt_number": attempts - 1}


def pg_records() -> list[dict]:
    """Ray's placement group table as raylite's placement group records."""
    out = []
    for pg_id, e in ray.util.placement_group_table().items():
        nodes = e.get("bundles_to_node_id") or {}
        selectors = e.get("bundle_label_selector") or []
        bundles = [{"bundle_index": int(i), "resources": dict(r), "node_id": nodes.get(i),
                    "available": {}, "label_selector": dict(selectors[int(i)])
                    if int(i) < len(selectors) and selectors[int(i)] else {}}
                   for i, r in sorted((e.get("bundles") or {}).items())]
        created = (e.get("stats") or {}).get("start_time_us") if isinstance(e.get("stats"),
                                                                            dict) else None
        out.append({"placement_group_id": pg_id, "name": e.get("name") or "",
                    "strategy": e.get("strategy"), "state": e.get("state"),
                    "bundles": bundles, "created_at": created / 1e6 if created else None,
                    "infeasible": e.get("state") == "INFEASIBLE"})
    return out


def cluster_state(*sections: str, limit: int | None = None, session=None,
                  timeout: float | None = 30.0) -> dict:
    """The sections of raylite's state (see :func:`raylite.core.runtime_api.cluster_state`)
    from Ray's node, placement group, actor and worker tables and its state API."""
    if session is None:
        ensure()
    want = set(sections or ALL)
    t = int(timeout or 30)
    where = {"address": ray.get_runtime_context().gcs_address, "timeout": t,
             "raise_on_missing_output": False}  # this cluster, not any other on the host
    out: dict = {"time": time.time()}
    if "nodes" in want:
        out["nodes"] = node_records()
    if "actors" in want or "workers" in want:
        actors = actor_records()
        if "actors" in want:
            out["actors"] = actors
        if "workers" in want:
            out["workers"] = worker_records(actors)
    if "placement_groups" in want or "demand" in want:
        pgs = pg_records()
        if "placement_groups" in want:
            out["placement_groups"] = pgs
        if "demand" in want:
            out["demand"] = {"requests": [],
                             "placement_groups": [p for p in pgs if p["state"] == "PENDING"]}
    if "tasks" in want:
        out["tasks"] = task_records(limit, where)
    if "autoscaler" in want:
        out["autoscaler"] = None
        out["autoscaler_note"] = NO_AUTOSCALER
    return out


def cluster_nodes(session=None) -> list[dict]:
    ensure()
    return node_records()


def owned_objects(session=None) -> list[dict]:
    """Ray's objects (its state API's list, all of the cluster's), as raylite's records."""
    from ray.util import state as ray_state

    ensure()
    return [{"object_id": o["object_id"], "size": o.get("object_size"),
             "node_id": o.get("node_ip"), "location": "SHARED_MEMORY", "owner": o.get("ip"),
             "ref_count": None, "escaped": None, "reference_type": o.get("reference_type"),
             "task_status": o.get("task_status")}
            for o in _records(ray_state.list_objects(
                limit=10000, address=ray.get_runtime_context().gcs_address,
                raise_on_missing_output=False))]


def stored_objects(session=None) -> list[dict]:
    return []  # owned_objects already lists every object Ray knows


def flush_task_events(session=None) -> None:
    """Nothing to send: Ray's workers report task events themselves (about once a second)."""


# ------------------------------------------------------------------ events
class PolledEvents:
    """The event subscription of the Ray backend (the interface of
    ``runtime_api.EventSubscription``): Ray publishes no event stream, so this polls
    Ray's state every ``interval`` seconds and turns what changed into raylite's events:
    ``node`` (``node_id``, ``alive``, ``info``), ``actor`` (actor records),
    ``placement_group`` (group records), ``task`` (``events``: changed task records).
    ``pending`` and ``autoscaler`` events never come (see the module's docstring)."""

    def __init__(self, topics: list[str], session=None, interval: float = 0.5):
        from raylite.core.runtime_api import EVENT_TOPICS

        bad = [t for t in topics if t not in EVENT_TOPICS]
        if bad:
            raise ValueError(f"Unknown event topics {bad}; choose from {sorted(EVENT_TOPICS)}")
        ensure()
        self.session = runtime.core
        self.topics = set(topics)
        self.interval = interval
        self.synced = threading.Event()
        self.synced.set()  # nothing is missed: the first poll sees the whole state
        self._queue: list[tuple[str, dict]] = []
        self._seen: dict = {}
        self._next = 0.0

    def ping(self) -> None:
        pass

    def ended(self) -> bool:
        return runtime.core is not self.session

    def recv(self, timeout_ms: int = 100) -> tuple[str, dict] | None:
        deadline = time.monotonic() + timeout_ms / 1000.0
        while not self._queue:
            now = time.monotonic()
            if now >= self._next:
                self._next = now + self.interval
                try:
                    self._poll()
                except Exception as e:  # the cluster went away
                    if self.ended():
                        raise ConnectionError(str(e)) from None
                continue
            if now >= deadline:
                return None
            time.sleep(min(self._next, deadline) - now)
        return self._queue.pop(0)

    def _diff(self, topic: str, key: str, records: list[dict], emit) -> None:
        seen = self._seen.setdefault(topic, {})
        for r in records:
            if seen.get(r[key]) != r:
                seen[r[key]] = r
                emit(r)

    def _poll(self) -> None:
        sections = [s for s, t in (("nodes", "node"), ("actors", "actor"),
                                   ("placement_groups", "placement_group"), ("tasks", "task"))
                    if t in self.topics]
        if not sections:
            return
        state = cluster_state(*sections, session=self.session, timeout=5)
        q = self._queue
        if "nodes" in state:
            self._diff("node", "node_id", state["nodes"], lambda n: q.append(
                ("node", {"node_id": n["node_id"], "alive": n["alive"], "info": n})))
        if "actors" in state:
            self._diff("actor", "actor_id", state["actors"], lambda a: q.append(("actor", a)))
        if "placement_groups" in state:
            self._diff("placement_group", "placement_group_id", state["placement_groups"],
                       lambda p: q.append(("placement_group", p)))
        if "tasks" in state:
            changed: list = []
            self._diff("task", "task_id", state["tasks"], changed.append)
            if changed:
                q.append(("task", {"events": changed}))

    def close(self) -> None:
        self._queue.clear()


subscribe_events = PolledEvents
