"""Pure helpers over metrics: nested lookups and which checkpoints to keep."""

from __future__ import annotations

import math

_MISSING = object()


def lookup(metrics: dict, name: str):
    """``metrics[name]`` if that exact key exists, else ``name`` read as a ``/`` path
    into nested dicts and lists (``"val/loss"``, ``"a/0/b"``). Raises KeyError."""
    if name in metrics:
        return metrics[name]
    node = metrics
    for part in name.split("/"):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.lstrip("-").isdigit() and \
                -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(name)
    return node


def score(metrics: dict, name: str | None):
    """The numeric value of ``name`` in ``metrics``, or None when absent or not a
    number."""
    if name is None:
        return None
    try:
        v = lookup(metrics, name)
    except KeyError:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        return None
    return float(v)


def best(records: list[dict], metric: str, mode: str) -> dict | None:
    """The record (``{"metrics": ...}``) with the best ``metric``; None if none has it."""
    scored = [(score(r["metrics"], metric), i) for i, r in enumerate(records)]
    scored = [(s, i) for s, i in scored if s is not None]
    if not scored:
        return None
    pick = max(scored) if mode == "max" else min(scored, key=lambda t: (t[0], -t[1]))
    return records[pick[1]]


def to_delete(records: list[dict], num_to_keep: int | None, attr: str | None,
              order: str) -> list[int]:
    """Indices of ``records`` (registered checkpoints, oldest first, each with
    ``metrics`` and ``pending``) that retention removes: all but the ``num_to_keep``
    best by ``attr`` (most recent without one; those lacking the metric rank last),
    never the latest one or one whose validation is pending."""
    if num_to_keep is None or len(records) <= num_to_keep:
        return []
    idx = list(range(len(records)))
    if attr is None:
        keep = set(idx[-num_to_keep:])
    else:
        def rank(i):
            s = score(records[i]["metrics"], attr)
            if s is None:
                return (1, 0.0, -i)
            return (0, -s if order == "max" else s, -i)
        keep = set(sorted(idx, key=rank)[:num_to_keep])
    keep.add(idx[-1])
    return [i for i in idx if i not in keep and not records[i].get("pending")]
