"""raylite.data: just enough of Ray Data for Train and batch LLM inference.

``from raylite import data`` reads like Ray Data::

    ds = data.from_items([{"x": i} for i in range(1000)])
    ds = ds.map_batches(lambda b: {"x": b["x"], "y": b["x"] * 2})
    for batch in ds.iter_batches(batch_size=100):   # dicts of NumPy arrays
        ...

Blocks are dicts of NumPy columns kept in raylite's object store (read zero-copy);
plans are lazy and run on tasks (functions) and actor pools (classes, ``concurrency``
actors). ``streaming_split`` shares one execution among Train workers. What raylite
leaves out: Ray Data's full operator set (joins, groupby, sort, aggregates), write APIs,
object-store-bytes backpressure, autoscaling actor pools. See README.md ("Data").
"""

from __future__ import annotations

from raylite.data.context import DataContext, ExecutionOptions, ExecutionResources
from raylite.data.dataset import Dataset, MaterializedDataset
from raylite.data.iterator import DataIterator
from raylite.data.read_api import (
    from_arrow,
    from_items,
    from_numpy,
    from_pandas,
    range,
    read_csv,
    read_parquet,
)

__all__ = [
    "Dataset", "MaterializedDataset", "DataIterator", "DataContext", "ExecutionOptions",
    "ExecutionResources", "from_items", "range", "from_numpy", "from_pandas", "from_arrow",
    "read_parquet", "read_csv",
]
