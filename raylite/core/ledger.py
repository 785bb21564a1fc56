"""Resource ledgers: what a node (or a placement-group bundle) has free, kept exact.

Every change to a node's or a bundle's free resources goes through one :class:`Pool`:

- ``take`` reserves what the scheduler found room for (a lease, an actor, a bundle);
- ``give`` returns it (the lease returned, the worker dead, the group removed);
- ``lend`` / ``reclaim`` handle a task blocked in ``get()``: it lends its CPU out so
  nested tasks cannot deadlock, and takes it back when it resumes. Taking it back may
  find the CPU in use by a nested task; Ray then oversubscribes the node for a while.
  Here the shortfall becomes *debt*, which the next ``give`` pays first, so ``available``
  never goes below zero and the sum of what is held and free always equals the total.

After every change the invariant ``0 <= available <= total`` is checked per resource; a
violation (a bug) is logged, counted in ``violations`` (the state API shows it per node)
and clamped, never silently kept.

:class:`GpuSet` tracks each physical GPU's free fraction, so a fractional request lands
on one GPU that has room for it, or is not admitted (free GPU summed over two GPUs is
not a place to run).
"""

from __future__ import annotations

import logging

log = logging.getLogger("raylite.ledger")

EPS = 1e-9


class Pool:
    """The free resources of a node or a bundle (``available`` is updated in place, so
    views holding the dict see every change)."""

    def __init__(self, total: dict, name: str):
        self.name = name
        self.total = {k: float(v) for k, v in total.items()}
        self.available = dict(self.total)
        self.debt: dict[str, float] = {}  # reclaimed while in use (see the module doc)
        self.violations = 0

    def take(self, demand: dict) -> None:
        """Reserve ``demand`` (the caller has checked it fits)."""
        for k, v in demand.items():
            self.available[k] = self.available.get(k, 0.0) - v
        self._check("take", demand)

    def give(self, amounts: dict) -> None:
        """Return resources taken or reclaimed earlier; debt is paid first."""
        for k, v in amounts.items():
            owed = self.debt.get(k, 0.0)
            if owed > EPS:
                paid = min(owed, v)
                self.debt[k] = owed - paid
                v -= paid
            self.available[k] = self.available.get(k, 0.0) + v
        self._check("give", amounts)

    def lend(self, cpus: float) -> None:
        """A task blocked in get() lends its CPUs out."""
        if cpus:
            self.give({"CPU": cpus})

    def reclaim(self, cpus: float) -> None:
        """The blocked task resumes and takes its CPUs back; what is in use meanwhile
        becomes debt instead of a negative balance."""
        if not cpus:
            return
        free = self.available.get("CPU", 0.0)
        got = min(free, cpus)
        self.available["CPU"] = free - got
        if cpus - got > EPS:
            self.debt["CPU"] = self.debt.get("CPU", 0.0) + (cpus - got)
        self._check("reclaim", {"CPU": cpus})

    def zero(self) -> None:
        """The node is gone: nothing is free any more (and nothing is owed)."""
        for k in self.available:
            self.available[k] = 0.0
        self.debt.clear()

    def _check(self, op: str, amounts: dict) -> None:
        for k in amounts:
            avail, total = self.available.get(k, 0.0), self.total.get(k, 0.0)
            if avail < -EPS or avail > total + EPS:
                self.violations += 1
                log.error("resource ledger of %s: %s %s left %s=%g of %g; clamped (a bug: "
                          "please report it)", self.name, op, amounts, k, avail, total)
                self.available[k] = min(max(avail, 0.0), total)
            elif avail < 0.0 or avail > total:  # rounding noise
                self.available[k] = min(max(avail, 0.0), total)


class GpuSet:
    """The free fraction of each physical GPU of a node."""

    def __init__(self, count: int):
        self.free = {i: 1.0 for i in range(count)}

    def capacity_for(self, amount: float) -> float:
        """How much of a request for ``amount`` GPUs could be placed: the most free on
        one GPU for a fraction, the number of wholly free GPUs for whole ones."""
        if amount < 1:
            return max(self.free.values(), default=0.0)
        return float(sum(1 for f in self.free.values() if f >= 1.0 - EPS))

    def take(self, amount: float) -> tuple | None:
        """GPU ids for ``amount`` (one GPU for a fraction, best fit), or None when no
        placement exists; () for no GPU."""
        if amount <= 0:
            return ()
        if amount < 1:
            for gid, free in sorted(self.free.items(), key=lambda kv: kv[1]):
                if free + EPS >= amount:
                    self.free[gid] = max(0.0, free - amount)
                    return (gid,)
            return None
        ids = [gid for gid, free in self.free.items() if free >= 1.0 - EPS][:int(amount)]
        if len(ids) < int(amount):
            return None
        for gid in ids:
            self.free[gid] = 0.0
        return tuple(ids)

    def give(self, ids: tuple, amount: float) -> None:
        """Return what ``take(amount)`` gave as ``ids``."""
        share = amount if amount < 1 else 1.0
        for gid in ids:
            if gid in self.free:
                self.free[gid] = min(1.0, self.free[gid] + share)
