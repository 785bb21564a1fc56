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
from raylite.core.scheduler import EPS, labels_match, parse_selector

BIG = 1 << 40  # "as many as you like" for demand that needs no resources


@dataclass
class Launch:
    node_type: str
    count: int
    reason: str


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


class _Shape:
    """Identical demands, counted: resources, label selector, hard node affinity."""

    __slots__ = ("demand", "selector", "parsed", "node", "count", "kinds", "vec",
                 "on_free", "on_new", "cands")

    def __init__(self, demand: dict, selector: tuple, node: str | None):
        self.demand = {k: float(v) for k, v in demand.items() if v and v > 0}
        self.selector = selector
        self.parsed = [p for k, e in selector for p in parse_selector({k: e})]
        self.node = node
        self.count = 0
        self.kinds: collections.Counter = collections.Counter()
        self.vec = None
        self.on_free = self.on_new = 0
        self.cands: list[str] | None = None  # the node types that can hold one

    def size(self) -> tuple:
        return (self.demand.get("GPU", 0.0), sum(self.demand.values()))

    def describe(self) -> str:
        what = ", ".join(f"{n} {k}{'s' if n > 1 else ''}" for k, n in self.kinds.items())
        res = ", ".join(f"{k}: {v:g}" for k, v in sorted(self.demand.items()))
        sel = f" where {dict(self.selector)}" if self.selector else ""
        return f"{what} {{{res}}}{sel}"


def _sel_key(selector) -> tuple:
    return tuple(sorted(selector.items())) if selector else ()


class _Pool:
    """Free capacity of nodes (rows) over resource kinds (columns), with label masks."""

    def __init__(self, cols: list[str]):
        self.col = {c: i for i, c in enumerate(cols)}
        self.free = np.zeros((0, len(cols)))
        self.labels: list[dict] = []
        self.ids: list[str] = []
        self.used = np.zeros(0, dtype=bool)
        self._masks: dict = {}

    def vec(self, d: dict) -> np.ndarray:
        v = np.zeros(len(self.col))
        for k, x in d.items():
            v[self.col[k]] = x
        return v

    def add(self, rows: list[tuple[str, dict, dict]]) -> None:
        """Append nodes as (node_id, free resources, labels)."""
        if not rows:
            return
        self.free = np.vstack([self.free, np.array(
            [[r[1].get(c, 0.0) for c in self.col] for r in rows]).reshape(len(rows), -1)])
        self.ids += [r[0] for r in rows]
        self.labels += [r[2] for r in rows]
        self.used = np.concatenate([self.used, np.zeros(len(rows), dtype=bool)])

    def mask(self, s: _Shape) -> np.ndarray:
        key = (s.selector, s.node)
        m = self._masks.get(key)
        n = len(self.ids)
        if m is None or len(m) < n:
            start = 0 if m is None else len(m)
            new = np.fromiter(((s.node is None or self.ids[i] == s.node)
                               and labels_match(self.labels[i], s.parsed)
                               for i in range(start, n)), dtype=bool, count=n - start)
            m = self._masks[key] = new if m is None else np.concatenate([m, new])
        return m

    def fits(self, s: _Shape) -> np.ndarray:
        """How many copies of ``s`` each row can still take (int array)."""
        idx = np.nonzero(s.vec > 0)[0]
        if len(idx) == 0:
            return np.where(self.mask(s), BIG, 0)
        q = np.floor((self.free[:, idx] + EPS) / s.vec[idx]).min(axis=1)
        return np.where(self.mask(s), np.maximum(q, 0), 0).astype(np.int64)

    def place(self, s: _Shape, count: int) -> int:
        """First fit of ``count`` copies over the rows in order; returns how many fit."""
        fit = self.fits(s)
        cum = np.cumsum(fit)
        if not len(cum) or cum[-1] == 0:
            return 0
        if cum[-1] > count:
            k = int(np.searchsorted(cum, count))
            fit = fit.copy()
            fit[k + 1:] = 0
            fit[k] = count - (cum[k - 1] if k else 0)
        nz = fit > 0
        self.free[nz] -= fit[nz, None] * s.vec
        self.used |= nz
        return int(fit.sum())

    def place_apart(self, shapes: list[_Shape]) -> list[_Shape]:
        """One copy of each shape, each on a different row; returns those that did not fit."""
        taken: list[int] = []
        left = []
        for s in sorted(shapes, key=_Shape.size, reverse=True):
            fit = self.fits(s)
            fit[taken] = 0
            i = int(np.argmax(fit > 0)) if len(fit) else 0
            if not len(fit) or fit[i] <= 0:
                left.append(s)
                continue
            self.free[i] -= s.vec
            self.used[i] = True
            taken.append(i)
        return left


def _fit_one(free: dict, demand: dict, limit: int) -> int:
    n = limit
    for k, v in demand.items():
        n = min(n, int((free.get(k, 0.0) + EPS) // v))
    return max(n, 0)


class _Planner:
    """Chooses node types for demand that needs new nodes, within the limits."""

    def __init__(self, types: dict[str, NodeTypeConfig], counts: dict[str, int],
                 max_workers: int | None, budget: int | None, scores: dict[str, float]):
        self.types = types
        self.order = {t: i for i, t in enumerate(types)}
        self.counts = counts  # running + launching (+ planned) per type
        self.max_workers = max_workers
        self.budget = budget
        self.scores = scores
        self.launches: list[Launch] = []

    def room(self, t: str) -> int:
        r = self.types[t].max_workers - self.counts[t]
        if self.max_workers is not None:
            r = min(r, self.max_workers - sum(self.counts.values()))
        if self.budget is not None:
            r = min(r, self.budget)
        return max(r, 0)

    def launch(self, t: str, n: int, reason: str) -> None:
        self.counts[t] += n
        if self.budget is not None:
            self.budget -= n
        self.launches.append(Launch(t, n, reason))

    def candidates(self, s: _Shape) -> list[str]:
        if s.cands is None:
            s.cands = [] if s.node is not None else [
                t for t, cfg in self.types.items()
                if labels_match(cfg.node_labels(), s.parsed)
                and _fit_one(cfg.resources, s.demand, 1) >= 1]
        return s.cands

    def score(self, t: str, take: dict) -> tuple:
        res = self.types[t].resources
        used: dict = collections.defaultdict(float)
        for s, n in take.items():
            for k, v in s.demand.items():
                used[k] += n * v
        util = [used[k] / v for k, v in res.items() if used.get(k, 0.0) > 0]
        gpu_ok = not (res.get("GPU", 0) > 0 and used.get("GPU", 0.0) == 0)
        if not util:
            return (gpu_ok, 0, 0.0, 0.0)
        return (gpu_ok, len(util), round(min(util), 3), round(sum(util) / len(util), 3))

    def pack(self, t: str, shapes: list[_Shape], rem: dict, least: dict) -> dict:
        """Pack the remaining demand onto one empty node of type ``t``, largest first
        (``shapes``: those ``t`` can hold, largest first; ``least``: resource -> the
        least any of them needs, to stop once the node is full)."""
        free = dict(self.types[t].resources)
        take = {}
        for s in shapes:
            left = rem[s]
            if not left:
                continue
            if any(free[k] + EPS < v for k, v in least.items()):
                break
            n = left
            for k, v in s.demand.items():
                n = min(n, int((free.get(k, 0.0) + EPS) // v))
            if n > 0:
                take[s] = n
                for k, v in s.demand.items():
                    free[k] -= n * v
        return take

    def _least(self, t: str, shapes: list[_Shape]) -> dict:
        """Resource -> the least any of ``shapes`` needs (those all of them need)."""
        if not shapes:
            return {}
        return {k: m for k in self.types[t].resources
                if (m := min(s.demand.get(k, 0.0) for s in shapes)) > 0}

    def best(self, lists: dict, rem: dict) -> tuple[str, dict] | None:
        """The type to launch next and what one node of it takes; ``lists``: type ->
        (shapes it can hold, their least needs)."""
        best = None
        for t, (shapes, least) in lists.items():
            if not shapes or not self.room(t):
                continue
            take = self.pack(t, shapes, rem, least)
            if not take:
                continue
            key = (self.score(t, take), self.scores.get(t, 1.0), -self.order[t])
            if best is None or key > best[0]:
                best = (key, t, take)
        return None if best is None else (best[1], best[2])

    def plan(self, shapes: list[_Shape], rem: dict, what: str) -> list[tuple[str, int]]:
        """Launch nodes for ``rem`` (shape -> count still to place); returns the
        (type, number of nodes) chosen, and lowers ``rem`` by what they hold."""
        shapes = sorted(shapes, key=_Shape.size, reverse=True)
        lists = {}
        for t in self.types:
            mine = [s for s in shapes if t in self.candidates(s)]
            lists[t] = (mine, self._least(t, mine))
        served: dict = collections.defaultdict(collections.Counter)
        chosen = []
        done = 0
        while True:
            pick = self.best(lists, rem)
            if pick is None:
                break
            t, take = pick
            copies = min(min(rem[s] // n for s, n in take.items()), self.room(t))
            for s, n in take.items():
                rem[s] -= n * copies
                served[t][s] += n * copies
                s.on_new += n * copies
                done += not rem[s]
            chosen.append((t, copies))
            self.counts[t] += copies
            if self.budget is not None:
                self.budget -= copies
            if 4 * done > len(shapes):  # drop the shapes placed in full
                for t, (mine, _) in lists.items():
                    mine = [s for s in mine if rem[s]]
                    lists[t] = (mine, self._least(t, mine))
                shapes = [s for s in shapes if rem[s]]
                done = 0
        for t, n in _merge(chosen).items():
            text = "; ".join(f"{c} of {s.describe()}" if c != s.count else s.describe()
                             for s, c in served[t].items())
            self.launches.append(Launch(t, n, f"{what}: {text}"))
        return chosen

    def why_not(self, s: _Shape) -> str:
        cands = self.candidates(s)
        if s.node is not None:
            return f"it must run on node {s.node}, which has no room for it now"
        if not cands:
            return "no node type has the resources and labels it needs"
        if self.budget == 0:
            return "waiting: the launch budget (upscaling_speed) is used up for now"
        if self.max_workers is not None and sum(self.counts.values()) >= self.max_workers:
            return f"the cluster is at max_workers={self.max_workers}"
        return "the types that fit are at their max_workers: " + ", ".join(cands)


def _merge(pairs) -> dict:
    out: dict = {}
    for t, n in pairs:
        out[t] = out.get(t, 0) + n
    return out


def _group(demand: dict) -> tuple[list[_Shape], list[list[_Shape]]]:
    """Group requests and bundles by shape; STRICT_SPREAD groups come back apart."""
    shapes: dict = {}

    def add(d: dict, sel: tuple, node, kind: str) -> _Shape:
        key = (tuple(sorted((k, v) for k, v in d.items() if v)), sel, node)
        s = shapes.get(key)
        if s is None:
            s = shapes[key] = _Shape(d, sel, node)
        s.count += 1
        s.kinds[kind] += 1
        return s

    for r in demand.get("requests", ()):
        strat = r.get("strategy")
        node = strat[1] if isinstance(strat, (list, tuple)) and len(strat) == 3 \
            and strat[0] == "node" and not strat[2] else None
        add(r["demand"], _sel_key(r.get("label_selector")), node, r.get("kind", "task"))
    spread = []
    for pg in demand.get("placement_groups", ()):
        bundles = [(b["resources"], _sel_key(b.get("label_selector"))) for b in pg["bundles"]]
        if pg["strategy"] == "STRICT_SPREAD":
            group = [_Shape(res, sel, None) for res, sel in bundles]
            for s in group:
                s.count, s.kinds["STRICT_SPREAD bundle"] = 1, 1
            spread.append(group)
        elif pg["strategy"] == "STRICT_PACK":
            total: dict = collections.defaultdict(float)
            for res, _ in bundles:
                for k, v in res.items():
                    total[k] += v
            add(total, tuple(sorted({p for _, sel in bundles for p in sel})), None,
                "STRICT_PACK group")
        else:
            for res, sel in bundles:
                add(res, sel, None, f"{pg['strategy']} bundle")
    return list(shapes.values()), spread


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
    shapes, spread = _group(demand)
    asked = []
    for b in resource_requests or ():
        s = _Shape(b, (), None)
        s.count, s.kinds["requested bundle"] = 1, 1
        asked.append(s)
    every = shapes + asked + [s for g in spread for s in g]
    cols = sorted({k for s in every for k in s.demand})
    live = [n for n in nodes if n.get("alive", True)]
    counts = collections.Counter({t: 0 for t in node_types})
    counts.update(n.get("node_type") for n in live if n.get("node_type") in node_types)
    base = dict(counts)
    pool = _Pool(cols)
    pool.add([(n["node_id"], n.get("available", n["resources"]), n.get("labels") or {})
              for n in live])
    for s in every:
        s.vec = pool.vec(s.demand)
    planner = _Planner(node_types, counts, max_workers, launch_budget, scores)

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
        totals = _Pool(cols)
        totals.add([(n["node_id"], n["resources"], n.get("labels") or {}) for n in live])
        totals.add([(f"<new {la.node_type}>", node_types[la.node_type].resources,
                     node_types[la.node_type].node_labels())
                    for la in planner.launches for _ in range(la.count)])
        rem = {}
        for s in sorted(asked, key=_Shape.size, reverse=True):
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
    for s in sorted(shapes, key=_Shape.size, reverse=True):
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
