"""A Dataset's plan: where its blocks come from (sources) and what is done to them (ops).

Pure data and pure functions: ``apply`` runs an op on one block wherever it is called
(a task, an actor of the pool, or the driver). :func:`stages` groups ops the way the
executor runs them: consecutive function ops with the same remote options fuse into one
task per block (as Ray fuses them); a class op runs alone in its actor pool.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raylite.data import block as B


@dataclass
class Source:
    """One input block: already in the object store (``ref``, ``num_rows`` known), or
    made by ``read(*args)`` in a task."""

    ref: Any = None
    num_rows: int | None = None
    read: Any = None
    args: tuple = ()


@dataclass
class Op:
    kind: str                      # "map_batches" | "map" | "filter" | "flat_map"
    fn: Any
    fn_args: tuple = ()
    fn_kwargs: dict = field(default_factory=dict)
    batch_size: int | None = None
    batch_format: str = "default"
    zero_copy_batch: bool = False
    ctor_args: tuple = ()
    ctor_kwargs: dict = field(default_factory=dict)
    remote_args: dict = field(default_factory=dict)
    concurrency: Any = None

    @property
    def is_class(self) -> bool:
        return isinstance(self.fn, type)

    def pool_size(self) -> int:
        """A class op's number of actors: ``concurrency`` (an int, or the upper end of a
        ``(min, max)`` tuple: raylite's pool does not autoscale); 1 when unset."""
        c = self.concurrency
        if c is None:
            return 1
        if isinstance(c, tuple):
            return int(c[-1])
        return int(c)


@dataclass
class Stage:
    ops: list
    actors: bool
    remote_args: dict
    concurrency: Any = None


def stages(ops: list[Op]) -> list[Stage]:
    out: list[Stage] = []
    for op in ops:
        if op.is_class:
            out.append(Stage([op], True, dict(op.remote_args), op.concurrency))
        elif out and not out[-1].actors and out[-1].remote_args == op.remote_args:
            out[-1].ops.append(op)
            if op.concurrency is not None:
                out[-1].concurrency = op.concurrency
        else:
            out.append(Stage([op], False, dict(op.remote_args), op.concurrency))
    return out


def apply(op: Op, block: B.Block, fn=None) -> B.Block:
    """Run ``op`` on ``block``; ``fn`` is the callable (a class op's instance)."""
    fn = op.fn if fn is None else fn
    if op.kind == "map_batches":
        return _map_batches(op, block, fn)
    rows = B.to_rows(block)
    if op.kind == "map":
        return B.from_rows([_row_out(fn(r, *op.fn_args, **op.fn_kwargs)) for r in rows])
    if op.kind == "filter":
        keep = np.fromiter((bool(fn(r, *op.fn_args, **op.fn_kwargs)) for r in rows), bool,
                           count=B.num_rows(block))
        return {k: v[keep] for k, v in block.items()}
    if op.kind == "flat_map":
        return B.from_rows([_row_out(x) for r in rows
                            for x in fn(r, *op.fn_args, **op.fn_kwargs)])
    raise ValueError(f"unknown op {op.kind!r}")


def _row_out(row):
    if not isinstance(row, dict):
        raise TypeError(f"map/flat_map functions must return dicts (rows), got "
                        f"{type(row).__name__}")
    return row


def _map_batches(op: Op, block: B.Block, fn) -> B.Block:
    n = B.num_rows(block)
    size = op.batch_size or n or 1
    outs = []
    for start in range(0, max(n, 1), size):
        batch = B.to_batch(B.slice_block(block, start, start + size), op.batch_format)
        if op.batch_format in ("default", "numpy") and not op.zero_copy_batch:
            batch = {k: np.array(v) for k, v in batch.items()}  # writable copies
        result = fn(batch, *op.fn_args, **op.fn_kwargs)
        if inspect.isgenerator(result):
            outs.extend(B.from_batch(r) for r in result)
        else:
            outs.append(B.from_batch(result))
    return B.concat(outs)


def run_ops(ops: list[Op], block: B.Block, fns=None) -> B.Block:
    for i, op in enumerate(ops):
        block = apply(op, block, None if fns is None else fns[i])
    return block


def meta_of(block: B.Block, node_id: str | None) -> dict:
    return {"num_rows": B.num_rows(block), "size_bytes": B.size_bytes(block),
            "node_id": node_id}
