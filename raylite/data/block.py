"""Blocks: the unit of data a Dataset moves through the object store.

A block is a ``dict[str, numpy.ndarray]`` of equal-length columns (Ray Data's blocks are
Arrow tables or pandas frames). Plain NumPy columns serialise as out-of-band buffers, so
a block read from the local object store is a set of read-only views of shared memory
(zero-copy). Strings and other Python objects become object columns (copied).

These helpers convert between blocks and the batch formats users see
(``"numpy"``/``"default"``: a dict of arrays, ``"pandas"``, ``"pyarrow"``), slice and
concatenate blocks, and turn rows into blocks. They are pure functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

Block = dict  # dict[str, np.ndarray]

BATCH_FORMATS = ("default", "numpy", "pandas", "pyarrow")


def num_rows(block: Block) -> int:
    for col in block.values():
        return len(col)
    return 0


def _column(values) -> np.ndarray:
    """A list of values as one column: a numeric/bool array where NumPy can make one of
    fixed shape, else an object array (strings, dicts, ragged lists)."""
    if isinstance(values, np.ndarray):
        return values
    if values and all(isinstance(v, np.ndarray) for v in values) and \
            len({v.shape for v in values}) == 1:
        return np.stack(values)
    if values and all(isinstance(v, (bool, int, float, np.number, np.bool_)) for v in values):
        return np.asarray(values)
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def from_rows(rows: list) -> Block:
    """Rows (dicts, or any value: it becomes column ``"item"``, as in Ray) as a block."""
    if not rows:
        return {}
    if all(isinstance(r, Mapping) for r in rows):
        keys = list(rows[0])
        for r in rows:
            if list(r) != keys:
                keys = list(dict.fromkeys(k for row in rows for k in row))
                break
        return {k: _column([r.get(k) for r in rows]) for k in keys}
    return {"item": _column(list(rows))}


def to_rows(block: Block) -> Iterable[dict]:
    cols = list(block.items())
    for i in range(num_rows(block)):
        yield {k: _scalar(v[i]) for k, v in cols}


def _scalar(v):
    return v.item() if isinstance(v, np.generic) else v


def slice_block(block: Block, start: int, end: int) -> Block:
    """Rows ``[start, end)``: views, no copy."""
    return {k: v[start:end] for k, v in block.items()}


def concat(blocks: list[Block]) -> Block:
    blocks = [b for b in blocks if num_rows(b)]
    if not blocks:
        return {}
    if len(blocks) == 1:
        return blocks[0]
    keys = list(blocks[0])
    for b in blocks[1:]:
        if list(b) != keys:
            raise ValueError(f"Cannot concatenate blocks with columns {keys} and {list(b)}")
    return {k: _concat_col([b[k] for b in blocks]) for k in keys}


def _concat_col(cols: list[np.ndarray]) -> np.ndarray:
    if any(c.dtype == object for c in cols):
        out = np.empty(sum(len(c) for c in cols), dtype=object)
        i = 0
        for c in cols:
            out[i:i + len(c)] = list(c) if c.ndim == 1 else [x for x in c]
            i += len(c)
        return out
    return np.concatenate(cols)


def take_rows(block: Block, indices: np.ndarray) -> Block:
    return {k: v[indices] for k, v in block.items()}


def check_format(batch_format: str | None) -> str:
    fmt = batch_format or "default"
    if fmt not in BATCH_FORMATS:
        raise ValueError(f"batch_format must be one of {BATCH_FORMATS} (or None), got "
                         f"{batch_format!r}")
    return fmt


def to_batch(block: Block, batch_format: str | None):
    """A block in a user-facing batch format."""
    fmt = check_format(batch_format)
    if fmt in ("default", "numpy"):
        return dict(block)
    if fmt == "pandas":
        import pandas as pd

        return pd.DataFrame({k: list(v) if v.ndim > 1 else v for k, v in block.items()})
    import pyarrow as pa

    return pa.table({k: list(v) if v.ndim > 1 else v for k, v in block.items()})


def from_batch(batch) -> Block:
    """Whatever a ``map_batches`` function returned, as a block: a dict of arrays or
    lists, a pandas DataFrame, or a pyarrow Table."""
    if isinstance(batch, Mapping):
        out = {}
        for k, v in batch.items():
            out[str(k)] = v if isinstance(v, np.ndarray) else _column(list(v))
        lens = {len(v) for v in out.values()}
        if len(lens) > 1:
            raise ValueError(f"A batch's columns have different lengths: "
                             f"{ {k: len(v) for k, v in out.items()} }")
        return out
    mod = type(batch).__module__
    if mod.startswith("pandas"):
        return {str(k): _from_series(batch[k]) for k in batch.columns}
    if mod.startswith("pyarrow"):
        return from_arrow(batch)
    raise TypeError(f"A batch must be a dict of arrays, a pandas DataFrame or a pyarrow "
                    f"Table; got {type(batch).__name__}")


def _from_series(s) -> np.ndarray:
    arr = s.to_numpy()
    if arr.dtype == object and len(arr) and all(isinstance(x, np.ndarray) for x in arr) and \
            len({x.shape for x in arr}) == 1:
        return np.stack(list(arr))
    return arr


def from_arrow(table) -> Block:
    out = {}
    for name in table.column_names:
        col = table.column(name)
        try:
            out[name] = col.to_numpy()
        except Exception:  # nested types
            out[name] = _column(col.to_pylist())
    return out


def size_bytes(block: Block) -> int:
    return int(sum(v.nbytes for v in block.values()))
