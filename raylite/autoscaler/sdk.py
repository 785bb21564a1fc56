"""Ray's ``ray.autoscaler.sdk``: ask the autoscaler for capacity ahead of demand."""

from __future__ import annotations

__all__ = ["request_resources"]


def request_resources(num_cpus: int | None = None, bundles: list[dict] | None = None) -> None:
    """Keep the cluster big enough to hold ``bundles`` (and ``num_cpus`` one-CPU bundles)
    all at once, on top of nothing: like Ray, the request is judged against the total
    resources of the nodes, replaces any earlier request, and ``request_resources()`` with
    no arguments (or ``num_cpus=0``) withdraws it. Nodes it needs are not scaled down.

    Differs from Ray: it talks to the autoscaler running in this driver
    (``raylite.autoscaler.start``), so it raises when none runs.
    """
    from raylite.autoscaler.monitor import get

    scaler = get()
    if scaler is None:
        raise RuntimeError("no autoscaler runs in this process; raylite.autoscaler.start() "
                           "one first")
    want = [{"CPU": 1.0}] * int(num_cpus or 0)
    for b in bundles or ():
        if not isinstance(b, dict) or any(not isinstance(v, (int, float)) or v < 0
                                          for v in b.values()):
            raise ValueError(f"a bundle is a dict of resource -> amount >= 0, got {b!r}")
        want.append({k: float(v) for k, v in b.items() if v})
    scaler.resource_requests = want
