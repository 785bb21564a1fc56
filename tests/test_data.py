"""raylite.data: creating datasets, transforms on tasks and actor pools, iteration,
files (local and fsspec URIs), streaming_split, on a real 2-CPU cluster."""

from __future__ import annotations

import os

import numpy as np
import pytest

import raylite
from raylite import data
from raylite.data._private.split import equal_split

pytestmark = pytest.mark.timeout(120)


def test_from_items_and_rows(shared_cluster):
    ds = data.from_items([{"a": i, "s": str(i)} for i in range(50)], override_num_blocks=5)
    assert ds.num_blocks() == 5 and ds.count() == 50
    rows = ds.take_all()
    assert rows[3] == {"a": 3, "s": "3"}
    assert data.from_items([1, 2, 3]).take_all() == [{"item": 1}, {"item": 2}, {"item": 3}]
    assert ds.schema()["a"] == np.int64 and ds.columns() == ["a", "s"]


def test_range_and_function_transforms(shared_cluster):
    ds = data.range(100).map_batches(lambda b: {"id": b["id"], "sq": b["id"] ** 2})
    ds = ds.filter(lambda r: r["id"] % 10 == 0).map(lambda r: {"v": r["sq"] + 1})
    assert sorted(r["v"] for r in ds.take_all()) == [i * i + 1 for i in range(0, 100, 10)]
    assert data.range(7).flat_map(lambda r: [r, r]).count() == 14
    # batch formats in and out
    pdf = data.range(10).map_batches(lambda df: df.assign(two=df["id"] * 2),
                                     batch_format="pandas")
    assert pdf.to_pandas()["two"].sum() == 90
    tab = data.range(10).map_batches(lambda t: t, batch_format="pyarrow")
    assert tab.count() == 10


def test_batches_are_zero_copy_views_of_the_store(shared_cluster):
    arr = np.arange(200_000, dtype=np.float32).reshape(-1, 4)
    ds = data.from_numpy(arr)
    (batch,) = list(ds.iter_batches(batch_size=None))
    assert not batch["data"].flags.writeable  # a view of shared memory, not a copy
    np.testing.assert_array_equal(batch["data"], arr)


def test_map_batches_class_runs_in_an_actor_pool(shared_cluster):
    class Tag:
        def __init__(self, offset):
            self.offset = offset

        def __call__(self, batch):
            return {"x": batch["x"] + self.offset,
                    "pid": np.full(len(batch["x"]), os.getpid())}

    ds = data.from_items([{"x": i} for i in range(64)], override_num_blocks=16)
    out = ds.map_batches(Tag, fn_constructor_args=(1000,), concurrency=2).take_all()
    assert sorted(r["x"] for r in out) == list(range(1000, 1064))
    assert len({r["pid"] for r in out}) == 2
    with pytest.raises(ValueError, match="concurrency"):
        ds.map_batches(Tag)


def test_iter_batches_rebatch_drop_last_and_shuffle(shared_cluster):
    ds = data.range(103, override_num_blocks=4)
    sizes = [len(b["id"]) for b in ds.iter_batches(batch_size=25)]
    assert sizes == [25, 25, 25, 25, 3]
    assert [len(b["id"]) for b in ds.iter_batches(batch_size=25, drop_last=True)] == [25] * 4
    shuffled = np.concatenate([b["id"] for b in ds.iter_batches(
        batch_size=10, local_shuffle_buffer_size=50, local_shuffle_seed=0)])
    assert sorted(shuffled) == list(range(103)) and list(shuffled) != list(range(103))
    df = next(iter(ds.iter_batches(batch_size=5, batch_format="pandas")))
    # blocks come in the order they finish (preserve_order=False, as Ray's default): the
    # first batch is 5 consecutive rows of some block
    first = int(df["id"].iloc[0])
    assert list(df.columns) == ["id"] and list(df["id"]) == list(range(first, first + 5))
    ordered = data.DataContext.get_current()
    ordered.execution_options.preserve_order = True
    try:  # a dataset keeps the context it was made with
        in_order = data.range(103, override_num_blocks=4)
        df = next(iter(in_order.iter_batches(batch_size=5, batch_format="pandas")))
        assert list(df["id"]) == [0, 1, 2, 3, 4]
    finally:
        ordered.execution_options.preserve_order = False


def test_iter_torch_batches(shared_cluster):
    torch = pytest.importorskip("torch")
    ds = data.from_numpy(np.ones((40, 3), dtype=np.float64))
    batches = list(ds.iter_torch_batches(batch_size=16, dtypes=torch.float32))
    assert [b["data"].shape[0] for b in batches] == [16, 16, 8]
    assert batches[0]["data"].dtype == torch.float32
    batches[0]["data"].add_(1)  # writable, not the store's memory


def test_read_parquet_and_csv_local_and_fsspec(shared_cluster, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    for i in range(3):
        pq.write_table(pa.table({"k": list(range(i * 10, i * 10 + 10))}),
                       tmp_path / f"part{i}.parquet")
    ds = data.read_parquet(str(tmp_path))
    assert ds.num_blocks() == 3 and sorted(r["k"] for r in ds.take_all()) == list(range(30))
    uri = f"file://{tmp_path}"
    assert data.read_parquet(uri).count() == 30
    pytest.importorskip("fsspec")
    via_fsspec = data.read_parquet(f"simplecache::file://{tmp_path}/part1.parquet")
    assert [r["k"] for r in via_fsspec.take_all()] == list(range(10, 20))
    pcsv.write_csv(pa.table({"a": [1, 2], "b": ["x", "y"]}), tmp_path / "t.csv")
    assert data.read_csv(str(tmp_path / "t.csv")).take_all() == [{"a": 1, "b": "x"},
                                                                 {"a": 2, "b": "y"}]
    with pytest.raises(FileNotFoundError):
        data.read_csv(str(tmp_path / "missing.csv"))


def test_materialize_split_shuffle(shared_cluster):
    ds = data.range(20).map(lambda r: {"id": r["id"] + 1}).materialize()
    assert ds.count() == 20 and not ds._ops
    parts = ds.split(3, equal=True)
    assert [p.count() for p in parts] == [6, 6, 6]
    sh = data.range(50).random_shuffle(seed=1)
    ids = [r["id"] for r in sh.take_all()]
    assert sorted(ids) == list(range(50)) and ids != list(range(50))
    assert data.range(10).repartition(3).num_blocks() == 3


@raylite.remote(num_cpus=0)
def _consume(it, epochs=1):
    return [[int(x) for b in it.iter_batches(batch_size=None) for x in b["id"]]
            for _ in range(epochs)]


def test_streaming_split_equal_across_epochs(shared_cluster):
    its = data.range(101, override_num_blocks=7).streaming_split(2, equal=True)
    a, b = raylite.get([_consume.remote(its[0], 2), _consume.remote(its[1], 2)])
    for e in range(2):
        assert len(a[e]) == len(b[e]) == 50
        assert not set(a[e]) & set(b[e])
    its = data.range(30).streaming_split(2, equal=False)
    a, b = raylite.get([_consume.remote(its[0]), _consume.remote(its[1])])
    assert sorted(a[0] + b[0]) == list(range(30))


def test_equal_split_prefers_local_blocks():
    plan = equal_split([10, 10, 10, 10], ["n1", "n2", "n1", "n2"], 2, ["n2", "n1"])
    assert plan == [[(1, 0, 10), (3, 0, 10)], [(0, 0, 10), (2, 0, 10)]]
    plan = equal_split([7, 5, 3], [None] * 3, 2)
    assert [sum(e - s for _, s, e in p) for p in plan] == [7, 7]


def test_execution_options(shared_cluster):
    ds = data.range(40, override_num_blocks=8).map_batches(lambda b: b)
    ds.context.execution_options = data.ExecutionOptions(preserve_order=True,
                                                         resource_limits={"cpu": 1})
    assert [r["id"] for r in ds.take_all()] == list(range(40))
    with pytest.raises(ValueError, match="Unknown execution resources"):
        data.ExecutionOptions(resource_limits={"tpu": 1})
