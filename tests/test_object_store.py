"""The object store across nodes: lost objects rebuilt from lineage, or ObjectLostError."""

from __future__ import annotations

import os

import numpy as np
import pytest

import raylite as ray
from raylite.cluster_utils import Cluster
from raylite.exceptions import ObjectLostError
from raylite.testing import wait_for_condition
from raylite.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def two_node_cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    doomed = cluster.add_node(num_cpus=1)
    cluster.connect()
    try:
        yield cluster, doomed
    finally:
        cluster.shutdown()


def _kill_and_wait(cluster, node) -> None:
    cluster.remove_node(node)
    wait_for_condition(lambda: not next(n for n in ray.nodes()
                                        if n["NodeID"] == node.node_id)["Alive"], timeout=15)


@ray.remote
def make_array(seed: int):
    return np.random.default_rng(seed).random(500_000), ray.get_runtime_context().get_node_id()


def test_object_on_dead_node_is_rebuilt_from_lineage(two_node_cluster):
    cluster, doomed = two_node_cluster
    on_doomed = NodeAffinitySchedulingStrategy(doomed.node_id, soft=True)
    arr_ref, node_ref = make_array.options(num_returns=2, max_retries=2,
                                           scheduling_strategy=on_doomed).remote(7)
    first = ray.get(arr_ref, timeout=20)
    assert ray.get(node_ref) == doomed.node_id
    _kill_and_wait(cluster, doomed)
    rebuilt = ray.get(arr_ref, timeout=30)
    assert np.array_equal(rebuilt, first)


def test_object_on_dead_node_without_retries_is_lost(two_node_cluster):
    cluster, doomed = two_node_cluster
    on_doomed = NodeAffinitySchedulingStrategy(doomed.node_id, soft=True)
    arr_ref, _ = make_array.options(num_returns=2, max_retries=0,
                                    scheduling_strategy=on_doomed).remote(3)
    ray.get(arr_ref, timeout=20)
    _kill_and_wait(cluster, doomed)
    with pytest.raises(ObjectLostError, match="lost"):
        ray.get(arr_ref, timeout=10)


def _store_bytes(session: str, pool: bool = False) -> int:
    """Bytes of live objects in the session's stores (or, with ``pool``, of the freed
    files kept for reuse)."""
    from raylite.core import store

    total = 0
    for root, _dirs, files in os.walk(store.session_dir(session)):
        if (os.path.basename(root) == store.FREE_DIR) != pool:
            continue
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except FileNotFoundError:
                pass  # freed while we looked
    return total


def test_put_del_loop_keeps_store_usage_bounded(cluster):
    """Freed objects leave the store: 2,000 puts of 10 MB (20 GB in all) never hold more
    than a few objects' worth of shared memory."""
    chunk = np.ones(10 * 1024 * 1024, dtype=np.uint8)
    peak = 0
    for i in range(2000):
        ref = ray.put(chunk)
        del ref
        if i % 100 == 0:
            peak = max(peak, _store_bytes(cluster.session))
    wait_for_condition(lambda: _store_bytes(cluster.session) == 0, timeout=10)
    assert peak < 200 * 1024 * 1024
    # freed files are kept for reuse, within the pool's bound
    from raylite.core import store

    assert _store_bytes(cluster.session, pool=True) <= store.POOL_MAX


def test_recycled_file_never_changes_under_a_reader(cluster):
    """A freed object's file is reused only when no process maps it: a zero-copy view
    kept after its ref is gone still shows the old bytes while new puts churn."""
    first = ray.put(np.full(4 << 20, 7, dtype=np.uint8))
    view = ray.get(first)
    del first
    for i in range(20):
        ref = ray.put(np.full(4 << 20, i, dtype=np.uint8))
        assert int(ray.get(ref)[-1]) == i
        del ref
    assert int(view.min()) == 7 == int(view.max())
    del view
    ref = ray.put(np.full(4 << 20, 9, dtype=np.uint8))  # now that file may be reused
    assert int(ray.get(ref).min()) == 9


def test_referenced_object_is_never_freed(cluster):
    keep = ray.put(np.arange(1_000_000))
    outer = ray.put({"inner": keep})
    del keep
    for _ in range(50):  # churn the store meanwhile
        del_me = ray.put(np.ones(2_000_000, dtype=np.uint8))
        del del_me
    inner = ray.get(outer)["inner"]
    assert int(ray.get(inner).sum()) == sum(range(1_000_000))


@pytest.fixture
def small_store():
    from raylite.core import store

    ctx = ray.init(num_cpus=1, object_store_memory=40 * 1024 * 1024)
    try:
        yield ctx
    finally:
        ray.shutdown()
    assert not os.path.exists(store.spill_root(ctx.session))  # spilled files are removed


def test_full_store_spills_oldest_objects_and_reads_them_back(small_store):
    from raylite.core import store

    arrays = [np.full(2 * 1024 * 1024, i, dtype=np.float32) for i in range(10)]  # 8 MiB each
    refs = [ray.put(a) for a in arrays]
    spill = store.spill_root(small_store.session)
    assert _store_bytes(small_store.session) <= 40 * 1024 * 1024
    assert sum(len(files) for _, _, files in os.walk(spill)) >= 5  # the oldest went to disk

    @ray.remote
    def first(x):
        return float(x[0])

    assert ray.get([first.remote(r) for r in refs], timeout=30) == [float(i) for i in range(10)]
    assert all(np.array_equal(ray.get(r), a) for r, a in zip(refs, arrays, strict=True))


def test_object_larger_than_the_store_is_a_clear_error(small_store):
    with pytest.raises(ray.exceptions.ObjectStoreFullError, match="object_store_memory"):
        ray.put(np.ones(64 * 1024 * 1024, dtype=np.uint8))
    assert ray.get(ray.put(7)) == 7  # the store still works


def _transfers(node_id: str) -> int:
    from raylite.core.api import _cluster_info

    return next(n for n in _cluster_info()["nodes"] if n["node_id"] == node_id)["transfers"]


def test_cross_node_get_pulls_once_and_serves_later_readers_locally(two_nodes):
    """Four concurrent readers on the other node: one chunked transfer, a local copy."""
    from raylite.core import store

    far = next(n["NodeID"] for n in ray.nodes() if n["Labels"].get("zone") == "b")
    here = ray.get_runtime_context().get_node_id()
    assert far != here
    data = np.random.default_rng(0).random(5_000_000)  # 40 MB: several chunks
    ref = ray.put(data)

    @ray.remote(num_cpus=0.25, label_selector={"zone": "b"})
    def checksum(x):
        return ray.get_runtime_context().get_node_id(), float(x.sum())

    results = ray.get([checksum.remote(ref) for _ in range(4)], timeout=60)
    assert {node for node, _ in results} == {far}
    assert all(total == pytest.approx(float(data.sum())) for _, total in results)
    copy = os.path.join(store.node_dir(two_nodes.session, far), ref.hex())
    assert os.path.exists(copy)
    wait_for_condition(lambda: _transfers(far) >= 1, timeout=5)  # reported with heartbeats
    assert _transfers(far) == 1
    inode = os.stat(copy).st_ino
    assert ray.get(checksum.remote(ref), timeout=30)[1] == pytest.approx(float(data.sum()))
    assert os.stat(copy).st_ino == inode  # read from the local copy, not pulled again


def test_pulled_copies_are_freed_with_the_object(two_nodes):
    from raylite.core import store

    far = next(n["NodeID"] for n in ray.nodes() if n["Labels"].get("zone") == "b")
    ref = ray.put(np.ones(2_000_000))

    @ray.remote(label_selector={"zone": "b"})
    def touch(x):
        return float(x[0])

    assert ray.get(touch.remote(ref), timeout=30) == 1.0
    copy = os.path.join(store.node_dir(two_nodes.session, far), ref.hex())
    assert os.path.exists(copy)
    del ref
    wait_for_condition(lambda: not os.path.exists(copy), timeout=10)


def test_pool_trim_and_drop(tmp_path):
    from raylite.core import store

    free = tmp_path / store.FREE_DIR
    free.mkdir()
    old, new = free / f"{2 << 20}-old", free / f"{2 << 20}-new"
    for f in (old, new):
        f.write_bytes(b"x" * (2 << 20))
    os.utime(old, (1, 1))
    store.trim_pool(str(tmp_path), idle_s=60)
    assert not old.exists() and new.exists()
    assert store.drop_pool(str(tmp_path)) == 2 << 20 and not new.exists()


# ---------------------------------------------------------------- reference counting
def _stored(ref) -> bool:
    """Is the object's file still in the store (not freed)?"""
    from raylite.core import runtime, store

    core = runtime.core
    return os.path.exists(os.path.join(store.node_dir(core.session, core.node_id), ref.hex()))


def _big(value: int) -> np.ndarray:
    return np.full(2 << 20, value, dtype=np.uint8)


@ray.remote
class Keeper:
    def __init__(self):
        self.kept = None

    def keep(self, box):
        self.kept = box["ref"]  # a borrowed ref, held past the call
        return True

    def read(self):
        return int(ray.get(self.kept)[0])

    def drop(self):
        self.kept = None
        return True


def test_inner_ref_lives_as_long_as_its_container(cluster):
    inner = ray.put(_big(3))
    probe = ray.ObjectRef(inner.id, inner.owner, None)  # names it without holding it
    outer = ray.put({"ref": inner})
    del inner
    assert _stored(probe)
    assert int(ray.get(ray.get(outer)["ref"])[0]) == 3
    del outer
    wait_for_condition(lambda: not _stored(probe), message="inner freed with its container")


def test_ref_held_by_an_actor_is_kept_until_it_lets_go(cluster):
    keeper = Keeper.remote()
    inner = ray.put(_big(5))
    probe = ray.ObjectRef(inner.id, inner.owner, None)
    assert ray.get(keeper.keep.remote({"ref": inner}))
    del inner
    assert ray.get(keeper.read.remote()) == 5  # still there: the actor borrows it
    assert _stored(probe)
    ray.get(keeper.drop.remote())
    wait_for_condition(lambda: not _stored(probe), message="freed after the actor let go")


def test_borrower_death_releases_its_refs(cluster):
    keeper = Keeper.remote()
    inner = ray.put(_big(6))
    probe = ray.ObjectRef(inner.id, inner.owner, None)
    ray.get(keeper.keep.remote({"ref": inner}))
    del inner
    assert _stored(probe)
    ray.kill(keeper)
    wait_for_condition(lambda: not _stored(probe), message="freed when its borrower died")


def test_refs_nested_in_task_args_are_kept_while_the_task_runs(cluster):
    @ray.remote
    def total(refs):
        return sum(int(ray.get(r)[0]) for r in refs)

    refs = [ray.put(_big(i)) for i in range(1, 4)]
    probes = [ray.ObjectRef(r.id, r.owner, None) for r in refs]
    out = total.remote(refs)
    del refs
    assert ray.get(out) == 6
    del out
    wait_for_condition(lambda: not any(_stored(p) for p in probes),
                       message="args freed once the task and its result are gone")


def test_a_late_put_never_recreates_a_removed_store(cluster):
    """Only the agent makes its node's store: a put after the store went (a cluster
    stopping) fails instead of leaving a directory in /dev/shm nobody removes."""
    from raylite.core import runtime
    from raylite.exceptions import RayliteSystemError

    store_dir = runtime.core.store_dir
    os.rename(store_dir, store_dir + ".away")  # as if the agent had just removed it
    try:
        with pytest.raises(RayliteSystemError, match="is gone"):
            ray.put(np.zeros(1 << 20, dtype=np.uint8))
        assert not os.path.exists(store_dir)
    finally:
        os.rename(store_dir + ".away", store_dir)


def test_remove_dir_removes_what_a_late_writer_added(tmp_path, monkeypatch):
    import shutil

    from raylite.core import store

    target = tmp_path / "store"
    target.mkdir()
    real = shutil.rmtree
    calls = []

    def racing_rmtree(path, ignore_errors=False):
        real(path, ignore_errors=ignore_errors)
        if not calls:  # a writer recreates a file right after the first pass
            calls.append(1)
            os.makedirs(path)
            (target / "late.tmp").write_bytes(b"x")

    monkeypatch.setattr(store.shutil, "rmtree", racing_rmtree)
    store.remove_dir(str(target))
    assert not target.exists() and calls
