"""``Dataset``: a lazy plan over blocks in the object store (Ray: ``ray.data.Dataset``).

Transformations (``map_batches``, ``map``, ``filter``, ...) return a new Dataset and run
nothing; consuming it (``iter_batches``, ``take``, ``count``, ``materialize``, a Train
worker's shard) runs the plan with the streaming executor, on tasks and actor pools.
"""

from __future__ import annotations

import html
from collections.abc import Iterator

import numpy as np

import raylite
from raylite.data import block as B
from raylite.data._private import ops as O
from raylite.data.context import DataContext
from raylite.data.iterator import DataIterator

__all__ = ["Dataset", "MaterializedDataset"]

_REMOTE_ARGS = {"num_cpus", "num_gpus", "memory", "resources", "accelerator_type",
                "label_selector", "scheduling_strategy", "runtime_env", "max_retries"}


class Dataset:
    """A distributed collection of rows, as blocks (dicts of NumPy columns)."""

    def __init__(self, sources: list[O.Source], ops: list[O.Op] | None = None,
                 context: DataContext | None = None):
        self._sources = list(sources)
        self._ops = list(ops or [])
        self.context = context or DataContext.get_current().copy()

    def _with(self, op: O.Op) -> Dataset:
        return Dataset(self._sources, self._ops + [op], self.context.copy())

    # ----------------------------------------------------------------- transforms
    def map_batches(self, fn, *, batch_size: int | None | str = "default",
                    compute=None, batch_format: str | None = "default",
                    zero_copy_batch: bool = False, fn_args=None, fn_kwargs=None,
                    fn_constructor_args=None, fn_constructor_kwargs=None,
                    num_cpus: float | None = None, num_gpus: float | None = None,
                    memory: float | None = None, concurrency=None,
                    **ray_remote_args) -> Dataset:
        """Apply ``fn`` to batches. A function runs in tasks; a class runs in a pool of
        ``concurrency`` actors, each constructing it once with
        ``fn_constructor_args``/``kwargs`` (Ray's "stateful transform").

        Differs from Ray: batches never span blocks (``batch_size`` cuts each block;
        ``"default"`` / None means the whole block), and an actor pool's size is fixed
        (the upper end of a ``(min, max)`` ``concurrency``). ``zero_copy_batch=True``
        passes read-only views of the store instead of writable copies.
        """
        if isinstance(fn, type):
            if concurrency is None:
                raise ValueError("map_batches with a class needs concurrency=<number of "
                                 "actors> (an int or a (min, max) tuple)")
        elif fn_constructor_args or fn_constructor_kwargs:
            raise ValueError("fn_constructor_args/kwargs apply only when fn is a class")
        if not callable(fn):
            raise TypeError(f"map_batches needs a function or a class, got {fn!r}")
        B.check_format(batch_format)
        if batch_size == "default":
            batch_size = None
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
        remote = self._remote_args(num_cpus, num_gpus, memory, ray_remote_args)
        return self._with(O.Op("map_batches", fn, tuple(fn_args or ()), dict(fn_kwargs or {}),
                               batch_size, batch_format or "default", zero_copy_batch,
                               tuple(fn_constructor_args or ()),
                               dict(fn_constructor_kwargs or {}), remote, concurrency))

    def map(self, fn, *, num_cpus=None, num_gpus=None, concurrency=None,
            fn_constructor_args=None, **ray_remote_args) -> Dataset:
        """Apply ``fn`` to each row (a dict) and keep what it returns (a dict)."""
        return self._row_op("map", fn, num_cpus, num_gpus, concurrency, fn_constructor_args,
                            ray_remote_args)

    def filter(self, fn, *, num_cpus=None, concurrency=None, **ray_remote_args) -> Dataset:
        """Keep the rows for which ``fn(row)`` is true."""
        return self._row_op("filter", fn, num_cpus, None, concurrency, None, ray_remote_args)

    def flat_map(self, fn, *, num_cpus=None, concurrency=None, **ray_remote_args) -> Dataset:
        """Replace each row by the rows (dicts) ``fn(row)`` returns."""
        return self._row_op("flat_map", fn, num_cpus, None, concurrency, None, ray_remote_args)

    def _row_op(self, kind, fn, num_cpus, num_gpus, concurrency, ctor_args, extra) -> Dataset:
        if isinstance(fn, type) and concurrency is None:
            raise ValueError(f"{kind} with a class needs concurrency=<number of actors>")
        remote = self._remote_args(num_cpus, num_gpus, None, extra)
        return self._with(O.Op(kind, fn, ctor_args=tuple(ctor_args or ()),
                               remote_args=remote, concurrency=concurrency))

    @staticmethod
    def _remote_args(num_cpus, num_gpus, memory, extra: dict) -> dict:
        bad = set(extra) - _REMOTE_ARGS
        if bad:
            raise TypeError(f"Unknown arguments {sorted(bad)}")
        out = dict(extra)
        for k, v in (("num_cpus", num_cpus), ("num_gpus", num_gpus), ("memory", memory)):
            if v is not None:
                out[k] = v
        return out

    def select_columns(self, cols: list[str]) -> Dataset:
        cols = [cols] if isinstance(cols, str) else list(cols)
        return self.map_batches(lambda b: {c: b[c] for c in cols}, zero_copy_batch=True)

    def drop_columns(self, cols: list[str]) -> Dataset:
        cols = {cols} if isinstance(cols, str) else set(cols)
        return self.map_batches(lambda b: {k: v for k, v in b.items() if k not in cols},
                                zero_copy_batch=True)

    def add_column(self, col: str, fn) -> Dataset:
        """Add column ``col`` computed by ``fn(batch)`` (a dict of arrays here; Ray passes
        a pandas DataFrame by default)."""
        def add(batch):
            batch[col] = np.asarray(fn(batch))
            return batch
        return self.map_batches(add)

    def random_shuffle(self, *, seed: int | None = None) -> MaterializedDataset:
        """Shuffle all rows. Differs from Ray: done in the caller (the rows are gathered
        and re-cut into as many blocks), so it suits data that fits in memory."""
        whole = self._gather()
        n = B.num_rows(whole)
        perm = np.random.default_rng(seed).permutation(n)
        return _from_block(B.take_rows(whole, perm), max(1, self.num_blocks()), self.context)

    def repartition(self, num_blocks: int, *, shuffle: bool = False) -> MaterializedDataset:
        """The same rows cut into ``num_blocks`` blocks (gathered in the caller)."""
        if shuffle:
            return self.random_shuffle().repartition(num_blocks)
        return _from_block(self._gather(), num_blocks, self.context)

    def limit(self, n: int) -> MaterializedDataset:
        return _from_block(B.from_rows(self.take(n)) if n else {}, 1, self.context)

    # ---------------------------------------------------------------- consumption
    def _stream(self) -> Iterator[tuple]:
        from raylite.data._private.executor import execute

        return execute(self._sources, self._ops, self.context.execution_options)

    def iterator(self) -> DataIterator:
        """A DataIterator over this dataset (each pass runs the plan again)."""
        return _DatasetIterator(self)

    def iter_batches(self, **kwargs) -> Iterator:
        """See :meth:`DataIterator.iter_batches`."""
        return self.iterator().iter_batches(**kwargs)

    def iter_torch_batches(self, **kwargs) -> Iterator:
        """See :meth:`DataIterator.iter_torch_batches`."""
        return self.iterator().iter_torch_batches(**kwargs)

    def iter_rows(self) -> Iterator[dict]:
        return self.iterator().iter_rows()

    def take(self, limit: int = 20) -> list[dict]:
        out: list[dict] = []
        if limit <= 0:
            return out
        for row in self.iter_rows():
            out.append(row)
            if len(out) >= limit:
                break
        return out

    def take_all(self, limit: int | None = None) -> list[dict]:
        rows = list(self.iter_rows())
        if limit is not None and len(rows) > limit:
            raise ValueError(f"The dataset has more than {limit} rows")
        return rows

    def take_batch(self, batch_size: int = 20, *, batch_format: str | None = "default"):
        for batch in self.iter_batches(batch_size=batch_size, batch_format=batch_format):
            return batch
        raise ValueError("The dataset is empty")

    def show(self, limit: int = 20) -> None:
        for row in self.take(limit):
            print(row)

    def count(self) -> int:
        """The number of rows (without running anything when it is known)."""
        if not self._ops and all(s.num_rows is not None for s in self._sources):
            return sum(s.num_rows for s in self._sources)
        return sum(meta["num_rows"] for _, meta in self._stream())

    def num_blocks(self) -> int:
        return len(self._sources)

    def _gather(self) -> B.Block:
        return B.concat(list(self.iterator()._blocks()))

    def columns(self) -> list[str]:
        return list(self.take_batch(1))

    def schema(self) -> dict:
        """``{column: dtype}`` of the first row (Ray returns a Schema object)."""
        return {k: v.dtype for k, v in self.take_batch(1).items()}

    def materialize(self) -> MaterializedDataset:
        """Run the plan once; the result's blocks stay in the object store."""
        sources = [O.Source(ref=ref, num_rows=meta["num_rows"]) for ref, meta in self._stream()]
        return MaterializedDataset(sources, [], self.context.copy())

    def to_pandas(self, limit: int | None = None):
        rows = self.take_all(limit)
        import pandas as pd

        return pd.DataFrame(rows)

    def streaming_split(self, n: int, *, equal: bool = False,
                        locality_hints: list | None = None) -> list[DataIterator]:
        """``n`` DataIterators that share one execution of this dataset (see
        ``raylite.data._private.split`` for how blocks are handed out). Each can be
        sent to a different worker; each of their ``iter_batches`` calls is an epoch."""
        from raylite.data._private.split import streaming_split

        return streaming_split(self, n, equal, locality_hints)

    def split(self, n: int, *, equal: bool = False) -> list[MaterializedDataset]:
        """``n`` materialized datasets of whole blocks (``equal=True``: equal rows)."""
        from raylite.data._private.split import equal_split

        mat = self.materialize()
        rows = [s.num_rows for s in mat._sources]
        if equal:
            plan = equal_split(rows, [None] * len(rows), n)
            return [_from_block(B.concat([B.slice_block(raylite.get(mat._sources[i].ref), s, e)
                                          for i, s, e in part]), 1, self.context)
                    for part in plan]
        return [MaterializedDataset(mat._sources[k::n], [], self.context.copy())
                for k in range(n)]

    def __repr__(self) -> str:
        ops = " -> ".join(op.kind for op in self._ops)
        return f"Dataset(num_blocks={self.num_blocks()}{', ops=' + ops if ops else ''})"

    def _repr_html_(self) -> str:
        return f"<code>{html.escape(repr(self))}</code>"


class MaterializedDataset(Dataset):
    """A Dataset whose blocks are already in the object store."""


class _DatasetIterator(DataIterator):
    def __init__(self, ds: Dataset):
        self._ds = ds

    def _pieces(self):
        for ref, _ in self._ds._stream():
            yield ref, 0, None

    def __repr__(self) -> str:
        return f"DataIterator({self._ds!r})"


def _from_block(block: B.Block, num_blocks: int, context=None) -> MaterializedDataset:
    n = B.num_rows(block)
    k = max(1, min(num_blocks, n or 1))
    bounds = np.linspace(0, n, k + 1).astype(int)
    sources = []
    for s, e in zip(bounds[:-1], bounds[1:], strict=False):
        part = {c: np.ascontiguousarray(v) for c, v in B.slice_block(block, s, e).items()}
        sources.append(O.Source(ref=raylite.put(part), num_rows=int(e - s)))
    return MaterializedDataset(sources, [], context.copy() if context else None)
