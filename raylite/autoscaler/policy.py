"""The autoscaling policy: a pure function from what the cluster needs and has to what to
launch and what to terminate, each with its reason. No I/O, no clock, nothing remembered
between calls: the monitor (``monitor.py``) gathers the inputs and applies the result.

``decide(demand, nodes, node_types, failures=..., now=...) -> Decision``. In order:

1. **Min counts**: launch the nodes each type lacks to reach ``min_workers``.
2. **Standing requests** (``request_resources``) are packed onto the *total* capacity of
   the nodes (running, launching, planned); what does not fit gets new nodes.
3. **Pending demand** (tasks, actors, placement-group bundles) is grouped by shape
   (resources, label selector, hard node affinity) and packed onto the *free* capacity of
   live and launching nodes, vectorised over nodes with NumPy (a decision for 10,000
   requests over 1,000 nodes takes milliseconds, not a request-by-node Python loop).
   STRICT_SPREAD groups need one node per bundle, STRICT_PACK groups one node for all
   their bundles; PACK and SPREAD bundles are placed like separate requests.
4. **New nodes** for what is left: repeatedly pick the node type whose node, packed with
   the remaining demand, scores best (Ray's utilisation score: GPU nodes only for GPU
   work, most resource kinds used, highest min and mean utilisation), ties broken by the
   **availability score** (below), then by the order of the configured types, and launch
   at once as many identical nodes as the remaining demand fills; per-type
   ``max_workers``, the cluster-wide ``max_workers`` and the launch budget
   (``upscaling_speed``) bound it. Demand no type can hold is reported infeasible.
5. **Scale down**: autoscaled nodes idle for ``idle_timeout_s`` that no pending demand
   was packed onto are terminated, never below ``min_workers``; nodes above a max are
   terminated, idle ones first.

**Availability** (SPEC "Autoscaler", Ray 2.53's ``CloudResourceMonitor``): the monitor
records the time of each type's last failed or timed-out launch and clears it when a node
of the type runs; ``score = 1 - t_fail / t_latest_fail`` (never failed: 1). So a type
that just failed scores 0 and one that failed long ago scores more; among types that are
otherwise equally good (same rounded utilisation score) the most available is launched.

Differences from Ray: a request's placement is estimated by first fit in node order, not
by the head's scheduler; the utilisation score is the min and mean over the resource
kinds used (Ray weights them); scores are rounded to 3 places so float noise never
hides a tie.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np

from raylite.autoscaler.config import NodeTypeConfig
from raylite.autoscaler.packing import Launch, Planner, Pool, Shape, group_demand


@dataclass
class Terminate:
    node_id: str
    node_type: str
    reason: str


@dataclass
class Decision:
    """What to do now. ``pending`` describes each demand shape: how many fit free
    capacity, how many go on new nodes, how many wait and why."""

    launches: list[Launch] = field(default_factory=list)
    terminations: list[Terminate] = field(default_factory=list)
    pending: list[dict] = field(default_factory=list)
    infeasible: list[dict] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    time: float = 0.0

    def launch_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for la in self.launches:
            out[la.node_type] = out.get(la.node_type, 0) + la.count
        return out


def availability_scores(failures: dict[str, float]) -> dict[str, float]:
    """``1 - t_fail / t_latest_fail`` for each type that failed; absent types score 1."""
    if not failures:
        return {}
    latest = max(failures.values())
    return {t: (1.0 - ts / latest) if latest > 0 else 0.0 for t, ts in failures.items()}


def decide(demand: dict, nodes: list[dict], node_types: dict[str, NodeTypeConfig], *,
           failures: dict[str, float] | None = None, now: float = 0.0,
           idle_timeout_s: float = 60.0, max_workers: int | None = None,
           launch_budget: int | None = None,
           resource_requests: list[dict] | None = None) -> Decision:
    """Decide what to launch and terminate (see the module docstring).

    ``demand``: ``{"requests": [{kind, demand, label_selector, strategy}, ...],
    "placement_groups": [{strategy, bundles: [{resources, label_selector}]}, ...]}`` as
    the head's state gives it. ``nodes``: dicts with ``node_id``, ``node_type`` (None for
    nodes the autoscaler does not manage), ``status`` (``"running"`` or ``"launching"``),
    ``resources``, ``available``, ``labels``, ``idle_s``, ``start_time``, ``alive``.
    ``failures``: node type -> time of its last failed launch. ``launch_budget``: how many
    nodes may be launched now (None: no limit). ``resource_requests``: standing bundles
    (``request_resources``) the cluster must be able to hold all at once. ``now`` only
    stamps the decision: the policy reads no clock.
    """
    failures = {t: ts for t, ts in (failures or {}).items() if t in node_types}
    scores = dict.fromkeys(node_types, 1.0)
    scores.update(availability_scores(failures))
    shapes, spread = group_demand(demand)
    asked = []
    for b in resource_requests or ():
        s = Shape(b, (), None)
        s.count, s.kinds["requested bundle"] = 1, 1
        asked.append(s)
    every = shapes + asked + [s for g in spread for s in g]
    cols = sorted({k for s in every for k in s.demand})
    live = [n for n in nodes if n.get("alive", True)]
    counts = collections.Counter({t: 0 for t in node_types})
    counts.update(n.get("node_type") for n in live if n.get("node_type") in node_types)
    base = dict(counts)
    pool = Pool(cols)
    pool.add([(n["node_id"], n.get("available", n["resources"]), n.get("labels") or {})
              for n in live])
    for s in every:
        s.vec = pool.vec(s.demand)
    planner = Planner(node_types, counts, max_workers, launch_budget, scores)

    def add_new(chosen, used: dict | None = None) -> None:
        for t, n in chosen:
            cfg = node_types[t]
            free = {k: v - (used or {}).get(k, 0.0) for k, v in cfg.resources.items()}
            pool.add([(f"<new {t}>", free, cfg.node_labels())] * n)

    # 1. min counts
    for t, cfg in node_types.items():
        n = min(cfg.min_workers - counts[t], planner.room(t))
        if n > 0:
            planner.launch(t, n, f"min_workers={cfg.min_workers}: {counts[t]} running "
                                 "or launching")
            add_new([(t, n)])
    # 2. standing requests: the cluster's total capacity must hold them
    protected: set = set()
    if asked:
        totals = Pool(cols)
        totals.add([(n["node_id"], n["resources"], n.get("labels") or {}) for n in live])
        totals.add([(f"<new {la.node_type}>", node_types[la.node_type].resources,
                     node_types[la.node_type].node_labels())
                    for la in planner.launches for _ in range(la.count)])
        rem = {}
        for s in sorted(asked, key=Shape.size, reverse=True):
            s.on_free = totals.place(s, 1)
            rem[s] = 1 - s.on_free
        protected = {totals.ids[i] for i in np.nonzero(totals.used)[0]}
        add_new(planner.plan([s for s in asked if rem[s]], rem, "request_resources"))
    # 3. STRICT_SPREAD groups: one node per bundle
    for group in spread:
        left = pool.place_apart(group)
        for s in group:
            s.on_free = int(s not in left)
        for s in left:
            add_new(planner.plan([s], {s: 1}, "STRICT_SPREAD placement group"), s.demand)
    # 4. pending requests and the other bundles: free capacity first, then new nodes
    rem = {}
    for s in sorted(shapes, key=Shape.size, reverse=True):
        s.on_free = pool.place(s, s.count)
        rem[s] = s.count - s.on_free
    planner.plan([s for s in shapes if rem[s]], rem, "pending")

    decision = Decision(launches=planner.launches, scores=scores, time=now)
    for s in every:
        waiting = s.count - s.on_free - s.on_new
        rec = {"demand": dict(s.demand), "label_selector": dict(s.selector),
               "kinds": dict(s.kinds), "count": s.count, "on_free_capacity": s.on_free,
               "on_new_nodes": s.on_new, "waiting": waiting,
               "reason": planner.why_not(s) if waiting else ""}
        decision.pending.append(rec)
        if waiting and s.node is None and not planner.candidates(s):
            decision.infeasible.append(rec)
    used = {pool.ids[i] for i in np.nonzero(pool.used)[0]}
    decision.terminations = _scale_down(live, node_types, base, used | protected,
                                        idle_timeout_s, max_workers)
    return decision


def _scale_down(live: list[dict], node_types: dict[str, NodeTypeConfig], counts: dict,
                needed: set, idle_timeout_s: float, max_workers: int | None) -> list[Terminate]:
    """Idle autoscaled nodes past the timeout (never below min), and any above a max."""
    running = [n for n in live if n.get("node_type") in node_types
               and n.get("status", "running") == "running"]
    out: list[Terminate] = []
    gone: set = set()

    def idle(n: dict) -> bool:
        return n.get("idle_s", 0.0) >= idle_timeout_s and n["node_id"] not in needed

    def drop(cands: list[dict], k: int, reason: str) -> None:
        # idle nodes first (most idle first), then the most recently started
        cands = sorted((n for n in cands if n["node_id"] not in gone),
                       key=lambda n: (not idle(n), -n.get("idle_s", 0.0),
                                      -n.get("start_time", 0.0)))
        for n in cands[:max(k, 0)]:
            gone.add(n["node_id"])
            out.append(Terminate(n["node_id"], n["node_type"], reason))

    for t, cfg in node_types.items():
        mine = [n for n in running if n["node_type"] == t]
        if counts[t] > cfg.max_workers:
            drop(mine, counts[t] - cfg.max_workers,
                 f"{counts[t]} nodes of {t} exceed its max_workers={cfg.max_workers}")
    total = sum(counts.values()) - len(gone)
    if max_workers is not None and total > max_workers:
        drop(running, total - max_workers,
             f"{total} autoscaled nodes exceed max_workers={max_workers}")
    for t, cfg in node_types.items():
        mine = [n for n in running if n["node_type"] == t and n["node_id"] not in gone]
        spare = len(mine) - cfg.min_workers
        for n in sorted((n for n in mine if idle(n)), key=lambda n: -n["idle_s"])[:spare]:
            gone.add(n["node_id"])
            out.append(Terminate(n["node_id"], t, f"idle for {n['idle_s']:.0f}s "
                                                  f"(idle_timeout_s={idle_timeout_s:g})"))
    return out
