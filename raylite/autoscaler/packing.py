"""Bin packing for the autoscaler policy: demand grouped into shapes, the free capacity
of nodes as a NumPy matrix (first fit of a shape over all nodes in one vectorised step),
and the planner that picks node types for what is left. Pure: no I/O, no clock.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np

from raylite.autoscaler.config import NodeTypeConfig
from raylite.core.scheduler import EPS, labels_match, parse_selector

BIG = 1 << 40  # "as many as you like" for demand that needs no resources


@dataclass
class Launch:
    node_type: str
    count: int
    reason: str


class Shape:
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


def sel_key(selector) -> tuple:
    return tuple(sorted(selector.items())) if selector else ()


class Pool:
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

    def mask(self, s: Shape) -> np.ndarray:
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

    def fits(self, s: Shape) -> np.ndarray:
        """How many copies of ``s`` each row can still take (int array)."""
        idx = np.nonzero(s.vec > 0)[0]
        if len(idx) == 0:
            return np.where(self.mask(s), BIG, 0)
        q = np.floor((self.free[:, idx] + EPS) / s.vec[idx]).min(axis=1)
        return np.where(self.mask(s), np.maximum(q, 0), 0).astype(np.int64)

    def place(self, s: Shape, count: int) -> int:
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

    def place_apart(self, shapes: list[Shape]) -> list[Shape]:
        """One copy of each shape, each on a different row; returns those that did not fit."""
        taken: list[int] = []
        left = []
        for s in sorted(shapes, key=Shape.size, reverse=True):
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


def fit_one(free: dict, demand: dict, limit: int) -> int:
    n = limit
    for k, v in demand.items():
        n = min(n, int((free.get(k, 0.0) + EPS) // v))
    return max(n, 0)


class Planner:
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

    def candidates(self, s: Shape) -> list[str]:
        if s.cands is None:
            s.cands = [] if s.node is not None else [
                t for t, cfg in self.types.items()
                if labels_match(cfg.node_labels(), s.parsed)
                and fit_one(cfg.resources, s.demand, 1) >= 1]
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

    def pack(self, t: str, shapes: list[Shape], rem: dict, least: dict) -> dict:
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

    def _least(self, t: str, shapes: list[Shape]) -> dict:
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

    def plan(self, shapes: list[Shape], rem: dict, what: str) -> list[tuple[str, int]]:
        """Launch nodes for ``rem`` (shape -> count still to place); returns the
        (type, number of nodes) chosen, and lowers ``rem`` by what they hold."""
        shapes = sorted(shapes, key=Shape.size, reverse=True)
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
        for t, n in merge(chosen).items():
            text = "; ".join(f"{c} of {s.describe()}" if c != s.count else s.describe()
                             for s, c in served[t].items())
            self.launches.append(Launch(t, n, f"{what}: {text}"))
        return chosen

    def why_not(self, s: Shape) -> str:
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


def merge(pairs) -> dict:
    out: dict = {}
    for t, n in pairs:
        out[t] = out.get(t, 0) + n
    return out


def group_demand(demand: dict) -> tuple[list[Shape], list[list[Shape]]]:
    """Group requests and bundles by shape; STRICT_SPREAD groups come back apart."""
    shapes: dict = {}

    def add(d: dict, sel: tuple, node, kind: str, count: int = 1) -> Shape:
        key = (tuple(sorted((k, v) for k, v in d.items() if v)), sel, node)
        s = shapes.get(key)
        if s is None:
            s = shapes[key] = Shape(d, sel, node)
        s.count += count
        s.kinds[kind] += count
        return s

    for r in demand.get("requests", ()):
        strat = r.get("strategy")
        node = strat[1] if isinstance(strat, (list, tuple)) and len(strat) == 3 \
            and strat[0] == "node" and not strat[2] else None
        add(r["demand"], sel_key(r.get("label_selector")), node, r.get("kind", "task"),
            max(1, int(r.get("count", 1))))  # "count": the queue a request stands for
    spread = []
    for pg in demand.get("placement_groups", ()):
        bundles = [(b["resources"], sel_key(b.get("label_selector"))) for b in pg["bundles"]]
        if pg["strategy"] == "STRICT_SPREAD":
            group = [Shape(res, sel, None) for res, sel in bundles]
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
