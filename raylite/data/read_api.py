"""Creating Datasets: from values in the driver, or reading files (Ray: ``ray.data.read_*``).

In-memory values are cut into blocks and put into the object store right away; files
are read lazily, one task per file, with pyarrow. Paths may be local or any fsspec URI
(``s3://``, ``gs://``, ``file://``, ...): the filesystem is opened in the reading task,
so it must be reachable from the workers (an fsspec ``memory://`` filesystem is private
to each process and cannot be read this way).
"""

from __future__ import annotations

import os

import numpy as np

from raylite.data import block as B
from raylite.data._private import ops as O
from raylite.data.context import DataContext
from raylite.data.dataset import Dataset, MaterializedDataset, _from_block

__all__ = ["from_items", "range", "from_numpy", "from_pandas", "from_arrow", "read_parquet",
           "read_csv"]

_range = range


def _num_blocks(override, n: int) -> int:
    k = override or DataContext.get_current().target_num_blocks
    return max(1, min(int(k), n or 1))


def from_items(items: list, *, override_num_blocks: int | None = None) -> MaterializedDataset:
    """A Dataset of ``items``: dicts become rows; any other value becomes ``{"item": v}``
    (as in Ray)."""
    items = list(items)
    k = _num_blocks(override_num_blocks, len(items))
    bounds = np.linspace(0, len(items), k + 1).astype(int)
    import raylite

    sources = []
    for s, e in zip(bounds[:-1], bounds[1:], strict=False):
        blk = B.from_rows(items[s:e])
        sources.append(O.Source(ref=raylite.put(blk), num_rows=int(e - s)))
    return MaterializedDataset(sources)


def _range_block(start: int, end: int) -> dict:
    return {"id": np.arange(start, end, dtype=np.int64)}


def range(n: int, *, override_num_blocks: int | None = None) -> Dataset:  # noqa: A001
    """Rows ``{"id": 0}`` ... ``{"id": n - 1}``, made lazily by read tasks."""
    if n < 0:
        raise ValueError(f"range needs n >= 0, got {n}")
    k = _num_blocks(override_num_blocks, n)
    bounds = np.linspace(0, n, k + 1).astype(int)
    return Dataset([O.Source(read=_range_block, args=(int(s), int(e)), num_rows=int(e - s))
                    for s, e in zip(bounds[:-1], bounds[1:], strict=False)])


def from_numpy(ndarrays, *, column: str = "data") -> MaterializedDataset:
    """One array (rows along axis 0) or a list of arrays (one block each), as column
    ``"data"``."""
    arrays = [ndarrays] if isinstance(ndarrays, np.ndarray) else list(ndarrays)
    import raylite

    sources = [O.Source(ref=raylite.put({column: np.ascontiguousarray(a)}), num_rows=len(a))
               for a in arrays]
    return MaterializedDataset(sources)


def from_pandas(dfs, *, override_num_blocks: int | None = None) -> MaterializedDataset:
    """One DataFrame (cut into blocks) or a list of DataFrames (one block each)."""
    if isinstance(dfs, (list, tuple)):
        import raylite

        blocks = [B.from_batch(df) for df in dfs]
        return MaterializedDataset([O.Source(ref=raylite.put(b), num_rows=B.num_rows(b))
                                    for b in blocks])
    blk = B.from_batch(dfs)
    return _from_block(blk, _num_blocks(override_num_blocks, B.num_rows(blk)))


def from_arrow(tables) -> MaterializedDataset:
    tables = tables if isinstance(tables, (list, tuple)) else [tables]
    import raylite

    blocks = [B.from_arrow(t) for t in tables]
    return MaterializedDataset([O.Source(ref=raylite.put(b), num_rows=B.num_rows(b))
                                for b in blocks])


# ------------------------------------------------------------------------- files
def _fs_and_path(path: str, filesystem=None):
    """(pyarrow-compatible filesystem or None for local, path within it)."""
    if filesystem is not None:
        return filesystem, path
    if "://" in path and not path.startswith("file://"):
        import fsspec

        fs, p = fsspec.core.url_to_fs(path)
        return fs, p
    return None, path[len("file://"):] if path.startswith("file://") else path


def _expand(paths, suffixes: tuple[str, ...], filesystem=None) -> list[tuple]:
    """Every file named or under a named directory: ``(fs, path)`` pairs, sorted."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    out = []
    for p in paths:
        fs, path = _fs_and_path(str(p), filesystem)
        if fs is None:
            if os.path.isdir(path):
                for root, _, files in os.walk(path):
                    out += [(None, os.path.join(root, f)) for f in sorted(files)
                            if f.endswith(suffixes) and not f.startswith((".", "_"))]
            elif os.path.exists(path):
                out.append((None, path))
            else:
                raise FileNotFoundError(f"No such file or directory: {path!r}")
        else:
            if fs.isdir(path):
                found = [f for f in sorted(fs.find(path)) if f.endswith(suffixes)]
                out += [(fs, f) for f in found]
            elif fs.exists(path):
                out.append((fs, path))
            else:
                raise FileNotFoundError(f"No such file or directory: {p!r}")
    if not out:
        raise ValueError(f"No {'/'.join(suffixes)} files found in {paths}")
    return sorted(out, key=lambda x: x[1])


def _read_parquet_file(fs, path: str, columns):
    import pyarrow.parquet as pq

    if fs is None:
        return pq.read_table(path, columns=columns)
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=columns)


def _read_csv_file(fs, path: str, read_options: dict):
    import pyarrow.csv as pcsv

    if fs is None:
        return pcsv.read_csv(path, **read_options)
    with fs.open(path, "rb") as f:
        return pcsv.read_csv(f, **read_options)


def _need_pyarrow():
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ImportError("Reading files needs pyarrow: pip install 'raylite[data]'") from None


def read_parquet(paths, *, filesystem=None, columns: list[str] | None = None,
                 **_ignored) -> Dataset:
    """Parquet files (a file, a directory, or a list; local or fsspec URIs), one read
    task (and block) per file. Differs from Ray: no row-group splitting of big files."""
    _need_pyarrow()
    files = _expand(paths, (".parquet", ".pq", ".parq") if not _is_file(paths) else ("",),
                    filesystem)
    return Dataset([O.Source(read=_read_parquet_file, args=(fs, p, columns))
                    for fs, p in files])


def read_csv(paths, *, filesystem=None, **arrow_csv_args) -> Dataset:
    """CSV files (local or fsspec URIs), one read task per file, with ``pyarrow.csv``
    (``arrow_csv_args`` go to ``pyarrow.csv.read_csv``)."""
    _need_pyarrow()
    files = _expand(paths, (".csv",) if not _is_file(paths) else ("",), filesystem)
    return Dataset([O.Source(read=_read_csv_file, args=(fs, p, arrow_csv_args))
                    for fs, p in files])


def _is_file(paths) -> bool:
    """One path with a suffix: read it whatever its suffix is."""
    return isinstance(paths, (str, os.PathLike)) and os.path.splitext(str(paths))[1] != ""
