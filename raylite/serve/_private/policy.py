"""Pure policies of request routing and replica placement (no I/O; tested directly)."""

from __future__ import annotations

import random
from collections.abc import Sequence


def choose_replica(inflight: Sequence[int], max_ongoing: int, rng=random) -> int | None:
    """Power of two choices: sample two replicas, take the one with fewer requests in
    flight if it is under ``max_ongoing``; when both are full, the least loaded replica
    that has room; None when every replica is full (the request queues)."""
    n = len(inflight)
    if n == 0:
        return None
    if n == 1:
        return 0 if inflight[0] < max_ongoing else None
    i = rng.randrange(n)
    j = rng.randrange(n - 1)
    if j >= i:
        j += 1
    best = i if inflight[i] <= inflight[j] else j
    if inflight[best] < max_ongoing:
        return best
    best = min(range(n), key=inflight.__getitem__)
    return best if inflight[best] < max_ongoing else None


def replicas_to_stop(replicas: Sequence[dict], count: int,
                     replicas_per_node: dict[str, int]) -> list[str]:
    """Which ``count`` replicas a downscale stops, in order.

    ``replicas``: ``{"replica_id", "running" (bool), "node_id", "seq" (start order)}``;
    ``replicas_per_node``: how many serve replicas (of all deployments) each node runs.
    Replicas not yet running go first (newest first); then running ones on the nodes with
    the fewest serve replicas (so whole nodes empty out and can be released), newest
    first within a node.
    """
    if count <= 0:
        return []
    pending = sorted((r for r in replicas if not r["running"]), key=lambda r: -r["seq"])
    newest_on: dict[str, int] = {}
    for r in replicas:
        if r["running"]:
            newest_on[r["node_id"]] = max(newest_on.get(r["node_id"], -1), r["seq"])
    # fewest replicas first; among equal nodes, the one with the newest replica; then
    # newest first within the node (a node is drained before the next is touched)
    running = sorted((r for r in replicas if r["running"]),
                     key=lambda r: (replicas_per_node.get(r["node_id"], 0),
                                    -newest_on[r["node_id"]], -r["seq"]))
    return [r["replica_id"] for r in (pending + running)[:count]]
