"""``streaming_split``: one execution of a Dataset shared by ``n`` consumers.

A coordinator actor (threaded, ``num_cpus=0``) runs the executor and hands blocks out
as consumers ask for them, one epoch at a time: each consumer's ``iter_batches`` call is
its next epoch, and an epoch's execution starts when its first consumer asks.

- ``equal=False``: blocks go to whoever asks next (fast consumers get more), preferring
  a block made on the consumer's node when ``locality_hints`` names it.
- ``equal=True``: the epoch's blocks are produced first, then cut (by slicing blocks,
  no copy) so every consumer gets exactly ``total // n`` rows (the remainder is dropped,
  as in Ray). Blocks stay on the node that made them; :func:`equal_split` prefers giving
  a consumer the blocks of its own node.

Differences from Ray: the equal split waits for the epoch's blocks before handing any
out (Ray streams them); consumers do not have to start epochs in lockstep.
"""

from __future__ import annotations

import threading

import raylite
from raylite.data.iterator import DataIterator


def equal_split(rows: list[int], nodes: list, n: int, hints: list | None = None
                ) -> list[list[tuple[int, int, int]]]:
    """Assign rows of blocks to ``n`` splits of exactly ``sum(rows) // n`` rows each.

    ``rows[i]`` is block i's row count and ``nodes[i]`` where it lives; returns, per
    split, ``(block_index, start, end)`` pieces. With ``hints`` (a node per split), whole
    blocks go to a split on their node while they fit; the rest is cut to fill up.
    """
    target = sum(rows) // n
    room = [target] * n
    out: list[list] = [[] for _ in range(n)]
    left = {i: (0, r) for i, r in enumerate(rows) if r}
    if hints:
        for i, (s, e) in list(left.items()):
            for k in range(n):
                if hints[k] is not None and hints[k] == nodes[i] and room[k] >= e - s:
                    out[k].append((i, s, e))
                    room[k] -= e - s
                    del left[i]
                    break
    for i, (s, e) in left.items():
        while s < e:
            k = max(range(n), key=lambda j: room[j])
            if room[k] == 0:
                break  # the remainder, dropped
            take = min(room[k], e - s)
            out[k].append((i, s, s + take))
            room[k] -= take
            s += take
    return out


class _Epoch:
    def __init__(self, stream, equal: bool, n: int, hints):
        self.stream = stream
        self.buffer: list = []  # (ref, meta) produced, not yet handed out
        self.assigned: list[list] | None = None
        self.done = [False] * n
        self.exhausted = False
        if equal:
            outs = list(stream)
            rows = [m["num_rows"] for _, m in outs]
            nodes = [m.get("node_id") for _, m in outs]
            plan = equal_split(rows, nodes, n, hints)
            self.assigned = [[(outs[i][0], s, e) for i, s, e in part] for part in plan]
            self.exhausted = True


class SplitCoordinator:
    def __init__(self, dataset, n: int, equal: bool, locality_hints):
        self.ds = dataset
        self.n = n
        self.equal = equal
        self.hints = list(locality_hints) if locality_hints else None
        self.epochs: dict[int, _Epoch] = {}
        self.lock = threading.Lock()

    def _epoch(self, e: int) -> _Epoch:
        with self.lock:
            ep = self.epochs.get(e)
            if ep is None:
                from raylite.data._private.executor import execute

                stream = execute(self.ds._sources, self.ds._ops,
                                 self.ds.context.execution_options)
                ep = self.epochs[e] = _Epoch(stream, self.equal, self.n, self.hints)
            return ep

    def next(self, split: int, e: int, k: int = 2):
        """Up to ``k`` more pieces ``(ref, start, end)`` of epoch ``e`` for ``split``;
        ``[]`` when its part of the epoch is over."""
        ep = self._epoch(e)
        with self.lock:
            if ep.assigned is not None:
                out, ep.assigned[split] = ep.assigned[split][:k], ep.assigned[split][k:]
            else:
                out = []
                hint = self.hints[split] if self.hints else None
                while len(out) < k:
                    item = self._pick(ep, hint)
                    if item is None:
                        break
                    out.append((item[0], 0, None))
            if not out:
                ep.done[split] = True
                if all(ep.done):
                    del self.epochs[e]
            return out

    def _pick(self, ep: _Epoch, hint):
        if hint is not None:
            for i, (_, meta) in enumerate(ep.buffer):
                if meta.get("node_id") == hint:
                    return ep.buffer.pop(i)
        if ep.buffer:
            return ep.buffer.pop(0)
        if ep.exhausted:
            return None
        item = next(ep.stream, None)  # run ahead to a block local to this consumer
        while item is not None and hint is not None and item[1].get("node_id") not in \
                (hint, None) and len(ep.buffer) < self.n:
            ep.buffer.append(item)
            item = next(ep.stream, None)
        if item is None:
            ep.exhausted = True
            return ep.buffer.pop(0) if ep.buffer else None
        return item


class SplitIterator(DataIterator):
    """One consumer's part of a ``streaming_split``."""

    def __init__(self, coordinator, index: int, world_size: int):
        self._coord = coordinator
        self._index = index
        self._world_size = world_size
        self._epoch = 0

    def _pieces(self):
        e = self._epoch
        self._epoch += 1
        ahead = self._coord.next.remote(self._index, e)
        while True:
            pieces = raylite.get(ahead)
            if not pieces:
                return
            ahead = self._coord.next.remote(self._index, e)  # fetch ahead of use
            yield from pieces

    def __repr__(self) -> str:
        return f"DataIterator(split {self._index} of {self._world_size})"


_coordinator_cls = None


def streaming_split(ds, n: int, equal: bool, locality_hints) -> list[SplitIterator]:
    global _coordinator_cls
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"streaming_split needs n >= 1, got {n!r}")
    if locality_hints is not None and len(locality_hints) != n:
        raise ValueError(f"locality_hints has {len(locality_hints)} entries for {n} splits")
    if _coordinator_cls is None:
        _coordinator_cls = raylite.remote(SplitCoordinator)
    coord = _coordinator_cls.options(num_cpus=0, max_concurrency=max(4, 2 * n + 1)).remote(
        ds, n, equal, locality_hints)
    return [SplitIterator(coord, i, n) for i in range(n)]
