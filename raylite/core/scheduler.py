"""Node selection: pure functions from (nodes, demand, strategy, labels) to a node.

No I/O here: the head calls these with its node table and applies the decision.
``NodeView`` is the little the policy needs to know about a node.
"""

from __future__ import annotations

import re

EPS = 1e-9


class NodeView:
    __slots__ = ("node_id", "total", "available", "labels", "alive")

    def __init__(self, node_id: str, total: dict, available: dict, labels: dict | None = None,
                 alive: bool = True):
        self.node_id = node_id
        self.total = total
        self.available = available
        self.labels = labels or {}
        self.alive = alive


def fits(available: dict, demand: dict) -> bool:
    return all(available.get(k, 0.0) + EPS >= v for k, v in demand.items() if v > 0)


_SELECTOR = re.compile(r"^(!)?(?:in\((.*)\)|([^(),!][^(),]*))$")


def parse_selector(selector: dict | None) -> list[tuple[str, bool, frozenset]]:
    """Parse ``{key: expr}`` into (key, negate, values); raises ValueError when malformed.

    Forms: ``"v"`` equals, ``"!v"`` not equal (also matches nodes without the key),
    ``"in(a,b)"`` one of, ``"!in(a,b)"`` none of.
    """
    if not selector:
        return []
    if not isinstance(selector, dict):
        raise ValueError(f"label_selector must be a dict of key -> expression, got {selector!r}")
    parsed = []
    for key, expr in selector.items():
        if not isinstance(key, str) or not key or not isinstance(expr, str):
            raise ValueError(f"label_selector entry {key!r}: {expr!r} must map a label name "
                             "to a string such as 'v', '!v', 'in(a,b)' or '!in(a,b)'")
        m = _SELECTOR.match(expr.strip())
        if not m:
            raise ValueError(f"Malformed label selector {key!r}: {expr!r}; use 'v', '!v', "
                             "'in(a,b)' or '!in(a,b)'")
        negate = bool(m.group(1))
        if m.group(2) is not None:
            values = frozenset(v.strip() for v in m.group(2).split(",") if v.strip())
            if not values:
                raise ValueError(f"Malformed label selector {key!r}: {expr!r}: in() is empty")
        else:
            values = frozenset([m.group(3).strip()])
        parsed.append((key, negate, values))
    return parsed


def labels_match(labels: dict, parsed: list) -> bool:
    for key, negate, values in parsed:
        has = labels.get(key) in values
        if has == negate:
            return False
    return True


def utilization(node: NodeView) -> float:
    used = [1.0 - node.available.get(k, 0.0) / v for k, v in node.total.items()
            if v > 0 and k in ("CPU", "GPU")]
    return max(used) if used else 0.0


def select_node(nodes: list[NodeView], demand: dict, strategy, selector: list,
                local_node: str | None = None, spread_counter: int = 0) -> str | None:
    """Pick a node for ``demand`` now, or None when no node can take it right now.

    DEFAULT is Ray's hybrid policy: pack onto the local node, then the first nodes whose
    utilisation stays under half, then the least utilised. SPREAD rotates over the nodes
    that fit. ``("node", node_id, soft)`` is node affinity.
    """
    candidates = [n for n in nodes if n.alive and labels_match(n.labels, selector)]
    if isinstance(strategy, tuple) and strategy[0] == "node":
        _, node_id, soft = strategy
        for n in candidates:
            if n.node_id == node_id:
                if fits(n.available, demand):
                    return n.node_id
                if not soft:
                    return None
        if not soft:
            return None
        strategy = "DEFAULT"
    if strategy == "SPREAD":  # round robin over the nodes, from where the last one ended
        ordered = sorted(candidates, key=lambda n: n.node_id)
        for i in range(len(ordered)):
            n = ordered[(spread_counter + i) % len(ordered)]
            if fits(n.available, demand):
                return n.node_id
        return None
    ready = [n for n in candidates if fits(n.available, demand)]
    if not ready:
        return None
    ready.sort(key=lambda n: n.node_id != local_node)
    for n in ready:
        if utilization(n) < 0.5:
            return n.node_id
    return min(ready, key=utilization).node_id


def feasible(nodes: list[NodeView], demand: dict, strategy, selector: list) -> bool:
    """Could any live node ever run ``demand`` (judged on total resources)?"""
    for n in nodes:
        if not n.alive or not labels_match(n.labels, selector):
            continue
        if isinstance(strategy, tuple) and strategy[0] == "node" and not strategy[2] \
                and n.node_id != strategy[1]:
            continue
        if fits(n.total, demand):
            return True
    return False


PG_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def _add(into: dict, demand: dict, sign: float = 1.0) -> None:
    for k, v in demand.items():
        into[k] = into.get(k, 0.0) + sign * v


def place_bundles(nodes: list[NodeView], bundles: list[dict], strategy: str,
                  selectors: list[list], use_total: bool = False) -> list[str] | None:
    """Choose a node for every bundle of a placement group, all or nothing.

    Returns the node ids in bundle order, or None when the group cannot be placed now
    (``use_total=True`` asks whether it could ever be placed, on empty nodes).
    PACK puts bundles on as few nodes as possible, SPREAD on as many as possible;
    the STRICT_ forms fail instead of falling back.
    """
    live = [n for n in nodes if n.alive]
    free = {n.node_id: dict(n.total if use_total else n.available) for n in live}
    by_id = {n.node_id: n for n in live}
    ok = [[n.node_id for n in live if labels_match(n.labels, sel)] for sel in selectors]
    if strategy == "STRICT_PACK":
        need: dict = {}
        for b in bundles:
            _add(need, b)
        common = set(ok[0]) if ok else set(free)
        for o in ok[1:]:
            common &= set(o)
        # the fullest node that fits everything (pack), ties by id for determinism
        fitting = [nid for nid in common if fits(free[nid], need)]
        if not fitting:
            return None
        best = min(fitting, key=lambda nid: (-utilization(by_id[nid]), nid))
        return [best] * len(bundles)
    chosen: list[str | None] = [None] * len(bundles)
    used: dict[str, int] = {}
    # place the most constrained bundles first (fewest candidate nodes, then largest)
    order = sorted(range(len(bundles)), key=lambda i: (len(ok[i]), -sum(bundles[i].values())))
    for i in order:
        cands = [nid for nid in ok[i] if fits(free[nid], bundles[i])]
        if strategy == "STRICT_SPREAD":
            cands = [nid for nid in cands if nid not in used]
        if not cands:
            return None
        if strategy == "PACK":  # nodes this group already uses first, then the fullest
            nid = min(cands, key=lambda c: (c not in used, -utilization(by_id[c]), c))
        else:  # SPREAD / STRICT_SPREAD: the nodes this group uses least, then emptiest
            nid = min(cands, key=lambda c: (used.get(c, 0), utilization(by_id[c]), c))
        chosen[i] = nid
        used[nid] = used.get(nid, 0) + 1
        _add(free[nid], bundles[i], -1.0)
    return chosen  # type: ignore[return-value]
