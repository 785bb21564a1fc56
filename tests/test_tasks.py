"""Tasks: remote functions and their options, get/put/wait, num_returns (ints and
streaming generators), nested tasks, ObjectRef arguments, large values, pickling by value,
runtime_env, GPUs, the runtime context and label/node placement.

Tests that start their own cluster come first: the module-scoped ``shared_cluster`` stays
up from its first use to the end of the module, and ``init`` refuses a second cluster.
"""

from __future__ import annotations

import os
import textwrap
import threading
import time

import numpy as np
import pytest
from fixtures import Signal, blocked

import raylite as ray
from raylite import exceptions as rexc
from raylite.testing import CounterActor, wait_for_condition

pytestmark = pytest.mark.timeout(30)


Counter = ray.remote(num_cpus=0)(CounterActor)


# ---------------------------------------------------------------- own clusters: GPUs


@pytest.fixture
def gpu_cluster():
    """A one-node cluster with 2 CPUs and 2 fake GPUs."""
    ctx = ray.init(num_cpus=2, num_gpus=2)
    try:
        yield ctx
    finally:
        ray.shutdown()


def test_cluster_reports_fake_gpus(gpu_cluster):
    assert ray.cluster_resources()["GPU"] == 2
    assert ray.cluster_resources()["CPU"] == 2


def test_num_gpus_sets_cuda_visible_devices(gpu_cluster):
    @ray.remote(num_gpus=1)
    def gpu_task():
        ctx = ray.get_runtime_context()
        return (os.environ.get("CUDA_VISIBLE_DEVICES"), ray.get_gpu_ids(),
                ctx.get_accelerator_ids())

    visible, ids, acc = ray.get(gpu_task.remote(), timeout=10)
    assert visible in ("0", "1")
    assert ids == [int(visible)]
    assert acc == {"GPU": [visible]}


def test_num_gpus_two_sees_both_devices(gpu_cluster):
    @ray.remote(num_gpus=2)
    def gpu_task():
        return os.environ.get("CUDA_VISIBLE_DEVICES"), sorted(ray.get_gpu_ids())

    visible, ids = ray.get(gpu_task.remote(), timeout=10)
    assert sorted(visible.split(",")) == ["0", "1"]
    assert ids == [0, 1]


def _make_meet():
    """A function for use inside tasks: announce ``me`` and wait (polling files) until
    each of ``others`` has announced itself; False if they never did (they did not run at
    the same time). Built in a function so that it is pickled by value and does not
    depend on workers importing this test module."""
    def meet(tmp_dir: str, me: str, others: list, timeout: float = 8.0) -> bool:
        open(os.path.join(tmp_dir, me), "w").close()
        deadline = time.monotonic() + timeout
        while not all(os.path.exists(os.path.join(tmp_dir, o)) for o in others):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True
    return meet


def test_concurrent_gpu_tasks_get_distinct_devices(gpu_cluster, tmp_path):
    _meet = _make_meet()

    @ray.remote(num_gpus=1)
    def hold(me, other):
        met = _meet(str(tmp_path), me, [other], timeout=5)
        return met, os.environ.get("CUDA_VISIBLE_DEVICES")

    (met_a, va), (met_b, vb) = ray.get([hold.remote("a", "b"), hold.remote("b", "a")],
                                       timeout=15)
    assert met_a and met_b  # both held a GPU at the same time
    assert sorted([va, vb]) == ["0", "1"]


def test_cpu_task_sees_no_gpus_after_gpu_task_on_same_worker(gpu_cluster):
    """A worker that ran a num_gpus task and is reused for a CPU-only task must not
    report the old GPU to it (Ray: get_gpu_ids() is [] for a task with no GPUs)."""

    @ray.remote(num_gpus=1)
    def gpu_pid():
        return os.getpid()

    @ray.remote
    def cpu_info():
        return os.getpid(), ray.get_gpu_ids()

    pid = ray.get(gpu_pid.remote(), timeout=10)
    seen = []

    def reused():
        # wait until every lease went back to the pool, so the head picks an idle worker
        res = ray.available_resources()
        if res.get("GPU") != 2 or res.get("CPU") != 2:
            return False
        seen.append(ray.get(cpu_info.remote(), timeout=10))
        return seen[-1][0] == pid

    wait_for_condition(reused, timeout=10, message="the GPU worker was never reused")
    assert seen[-1][1] == []


def test_actor_with_num_gpus_sees_its_device(gpu_cluster):
    @ray.remote(num_gpus=1)
    class GpuActor:
        def info(self):
            return os.environ.get("CUDA_VISIBLE_DEVICES"), ray.get_gpu_ids()

    a, b = GpuActor.remote(), GpuActor.remote()
    (va, ia), (vb, ib) = ray.get([a.info.remote(), b.info.remote()], timeout=10)
    assert sorted([va, vb]) == ["0", "1"]
    assert ia == [int(va)] and ib == [int(vb)]


# ---------------------------------------------------------------- own clusters: loading code


def _driver_only_module(tmp_path, monkeypatch, body: str):
    """A fresh module importable by the driver only (through its sys.path)."""
    import importlib
    import uuid

    name = f"driver_only_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    return importlib.import_module(name)


def test_function_that_fails_to_load_on_worker_is_a_task_error(cluster, tmp_path, monkeypatch):
    mod = _driver_only_module(tmp_path, monkeypatch, textwrap.dedent("""
        import os
        if os.environ.get("RAYLITE_NODE_ID"):  # set in workers only
            raise ImportError("this module refuses to load on workers")

        def helper(x):
            return x + 1
    """))

    @ray.remote(max_retries=0)
    def use(x):
        return mod.helper(x)

    with pytest.raises(ImportError, match="refuses to load on workers") as ei:
        ray.get(use.remote(1), timeout=15)
    assert isinstance(ei.value, rexc.RayTaskError)


def test_module_on_driver_sys_path_usable_in_tasks(cluster, tmp_path, monkeypatch):
    mod = _driver_only_module(tmp_path, monkeypatch, "def helper(x):\n    return x + 1\n")

    @ray.remote(max_retries=0)
    def use(x):
        return mod.helper(x)

    assert ray.get(use.remote(1), timeout=15) == 2


def test_module_on_driver_sys_path_usable_in_actors(cluster, tmp_path, monkeypatch):
    mod = _driver_only_module(tmp_path, monkeypatch, "def helper(x):\n    return x * 3\n")

    @ray.remote
    class User:
        def use(self, x):
            return mod.helper(x)

    assert ray.get(User.remote().use.remote(2), timeout=15) == 6


# ---------------------------------------------------------------- own clusters: two nodes


def _node_of_zone(zone: str) -> str:
    (node,) = [n["NodeID"] for n in ray.nodes() if n["Labels"].get("zone") == zone]
    return node


@ray.remote
def where():
    return ray.get_runtime_context().get_node_id()


def test_two_nodes_have_labels(two_nodes):
    ns = ray.nodes()
    assert len(ns) == 2 and all(n["Alive"] for n in ns)
    assert sorted(n["Labels"]["zone"] for n in ns) == ["a", "b"]
    for n in ns:
        assert n["Labels"]["raylite.io/node-id"] == n["NodeID"]
        assert n["Resources"]["CPU"] == 1


@pytest.mark.parametrize("zone", ["a", "b"])
def test_label_selector_equals(two_nodes, zone):
    refs = [where.options(label_selector={"zone": zone}).remote() for _ in range(4)]
    assert set(ray.get(refs, timeout=10)) == {_node_of_zone(zone)}


def test_label_selector_not_and_in(two_nodes):
    not_a = [where.options(label_selector={"zone": "!a"}).remote() for _ in range(3)]
    assert set(ray.get(not_a, timeout=10)) == {_node_of_zone("b")}
    in_b = [where.options(label_selector={"zone": "in(b,c)"}).remote() for _ in range(3)]
    assert set(ray.get(in_b, timeout=10)) == {_node_of_zone("b")}
    not_in = [where.options(label_selector={"zone": "!in(b,c)"}).remote() for _ in range(3)]
    assert set(ray.get(not_in, timeout=10)) == {_node_of_zone("a")}


def test_label_selector_on_actor(two_nodes):
    @ray.remote
    class Where:
        def node(self):
            return ray.get_runtime_context().get_node_id()

    a = Where.options(label_selector={"zone": "b"}).remote()
    assert ray.get(a.node.remote(), timeout=10) == _node_of_zone("b")


def test_unsatisfiable_label_selector_stays_pending(two_nodes):
    ref = where.options(label_selector={"zone": "nowhere"}).remote()
    ready, not_ready = ray.wait([ref], timeout=0.5)
    assert ready == [] and not_ready == [ref]
    ray.cancel(ref)
    with pytest.raises(rexc.TaskCancelledError):
        ray.get(ref, timeout=5)


def test_node_affinity_scheduling_strategy(two_nodes):
    from raylite.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    for zone in ("a", "b"):
        node = _node_of_zone(zone)
        strategy = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
        refs = [where.options(scheduling_strategy=strategy).remote() for _ in range(3)]
        assert set(ray.get(refs, timeout=10)) == {node}


def test_spread_actors_use_both_nodes(two_nodes):
    @ray.remote
    class Where:
        def node(self):
            return ray.get_runtime_context().get_node_id()

    # SPREAD puts small actors on both nodes; DEFAULT packs them onto one
    spread = [Where.options(num_cpus=0.1, scheduling_strategy="SPREAD").remote()
              for _ in range(4)]
    nodes = ray.get([a.node.remote() for a in spread], timeout=10)
    assert sorted(nodes.count(n) for n in set(nodes)) == [2, 2]
    packed = [Where.options(num_cpus=0.1).remote() for _ in range(2)]
    assert len(set(ray.get([a.node.remote() for a in packed], timeout=10))) == 1


# ---------------------------------------------------------------- remote functions, options


@ray.remote
def double(x):
    return x * 2


def test_remote_function_roundtrip(shared_cluster):
    assert ray.get(double.remote(21)) == 42
    assert ray.get([double.remote(i) for i in range(10)]) == [i * 2 for i in range(10)]


def test_kwargs_and_defaults(shared_cluster):
    @ray.remote
    def f(a, b=10, *, c=100):
        return a + b + c

    assert ray.get(f.remote(1)) == 111
    assert ray.get(f.remote(1, 2, c=3)) == 6
    assert ray.get(f.remote(a=5, b=5)) == 110


def test_remote_with_options_decorator_and_options_call(shared_cluster):
    @ray.remote(num_cpus=0.5, max_retries=0)
    def f():
        return "ok"

    assert ray.get(f.remote()) == "ok"
    assert ray.get(f.options(num_cpus=1, name="renamed").remote()) == "ok"
    assert ray.get(f.options(num_cpus=2).remote(), timeout=10) == "ok"  # the whole cluster


def test_remote_function_cannot_be_called_directly(shared_cluster):
    with pytest.raises(TypeError, match="remote"):
        double(1)


def test_assigned_resources_inside_task(shared_cluster):
    @ray.remote(num_cpus=0.5)
    def f():
        return ray.get_runtime_context().get_assigned_resources()

    assert ray.get(f.remote()) == {"CPU": 0.5}


@pytest.mark.parametrize("bad", [
    {"no_such_option": 1},
    {"num_cpus": -1},
    {"num_cpus": "two"},
    {"num_gpus": -0.5},
    {"num_returns": "many"},
    {"num_returns": -1},
    {"max_restarts": 1},  # an actor option
    {"resources": {"CPU": 1}},
    {"resources": {"custom": -1}},
    {"runtime_env": {"pip": ["requests"]}},
    {"runtime_env": {"env_vars": {"A": 1}}},
    {"label_selector": {"zone": "in()"}},
    {"label_selector": ["zone"]},
])
def test_invalid_task_options_raise_value_error(shared_cluster, bad):
    with pytest.raises(ValueError):
        double.options(**bad)
    with pytest.raises(ValueError):
        ray.remote(**bad)(lambda: None)


def test_invalid_scheduling_strategy_in_options(shared_cluster):
    with pytest.raises(ValueError, match="scheduling_strategy"):
        double.options(scheduling_strategy="BOGUS")


def test_invalid_scheduling_strategy_in_decorator(shared_cluster):
    with pytest.raises(ValueError, match="scheduling_strategy"):
        ray.remote(scheduling_strategy="BOGUS")(lambda: None)


def test_remote_decorator_rejects_positional_options():
    with pytest.raises(TypeError):
        ray.remote(1, 2)


# ---------------------------------------------------------------- get / put / wait


def test_put_get(shared_cluster):
    for value in [1, "s", None, [1, 2, {"a": (3, 4)}], b"\x00" * 10, {1, 2}]:
        assert ray.get(ray.put(value)) == value


def test_put_of_object_ref_is_type_error(shared_cluster):
    with pytest.raises(TypeError):
        ray.put(ray.put(1))


def test_get_list_keeps_order(shared_cluster):
    refs = [ray.put(i) for i in range(20)] + [double.remote(i) for i in range(5)]
    assert ray.get(refs) == list(range(20)) + [0, 2, 4, 6, 8]
    assert ray.get([]) == []


@pytest.mark.parametrize("bad", [1, "ref", [1, 2], None])
def test_get_bad_input_type_error(shared_cluster, bad):
    with pytest.raises(TypeError):
        ray.get(bad)


def test_get_timeout_raises_get_timeout_error(shared_cluster):
    sig = Signal.remote()

    ref = blocked.remote(sig, "done")
    start = time.monotonic()
    with pytest.raises(rexc.GetTimeoutError):
        ray.get(ref, timeout=0.3)
    assert time.monotonic() - start < 2
    with pytest.raises(TimeoutError):  # GetTimeoutError is a TimeoutError too
        ray.get([ref], timeout=0)
    ray.get(sig.send.remote())
    assert ray.get(ref, timeout=10) == "done"


def test_wait_num_returns_and_order(shared_cluster):
    sig = Signal.remote()

    done = [ray.put(i) for i in range(3)]
    slow = blocked.remote(sig, 1)
    refs = [done[0], slow, done[1], done[2]]

    ready, not_ready = ray.wait(refs)
    assert ready == [done[0]] and not_ready == [slow, done[1], done[2]]

    ready, not_ready = ray.wait(refs, num_returns=2)
    assert ready == [done[0], done[1]] and not_ready == [slow, done[2]]

    ready, not_ready = ray.wait(refs, num_returns=3, timeout=5)
    assert ready == done and not_ready == [slow]

    start = time.monotonic()
    ready, not_ready = ray.wait(refs, num_returns=4, timeout=0.3)
    assert 0.2 < time.monotonic() - start < 2
    assert ready == done and not_ready == [slow]

    ready, not_ready = ray.wait([slow], timeout=0)
    assert ready == [] and not_ready == [slow]

    ray.get(sig.send.remote())
    ready, not_ready = ray.wait(refs, num_returns=4, timeout=10)
    assert ready == refs and not_ready == []


def test_wait_returns_as_soon_as_enough_are_ready(shared_cluster):
    sig = Signal.remote()

    slow = blocked.remote(sig)
    fast = double.remote(1)
    start = time.monotonic()
    ready, not_ready = ray.wait([slow, fast], num_returns=1, timeout=20)
    assert ready == [fast] and not_ready == [slow]
    assert time.monotonic() - start < 5
    ray.get(sig.send.remote())
    ray.get(slow, timeout=10)


def test_wait_counts_failed_tasks_as_ready(shared_cluster):
    @ray.remote(max_retries=0)
    def fail():
        raise ValueError("x")

    ref = fail.remote()
    ready, _ = ray.wait([ref], timeout=10)
    assert ready == [ref]


def test_wait_bad_input(shared_cluster):
    r1, r2 = ray.put(1), ray.put(2)
    with pytest.raises(TypeError):
        ray.wait(r1)  # a single ref, not a list
    with pytest.raises(TypeError):
        ray.wait([r1, 2])
    with pytest.raises(ValueError):
        ray.wait([r1, r1])
    with pytest.raises(ValueError):
        ray.wait([r1, r2], num_returns=3)
    with pytest.raises(ValueError):
        ray.wait([r1], num_returns=0)


# ---------------------------------------------------------------- num_returns


def test_num_returns_int(shared_cluster):
    @ray.remote(num_returns=3)
    def three():
        return 1, "two", [3]

    refs = three.remote()
    assert isinstance(refs, list) and len(refs) == 3
    assert all(isinstance(r, ray.ObjectRef) for r in refs)
    assert ray.get(refs) == [1, "two", [3]]

    @ray.remote
    def pair():
        return 1, 2

    x, y = pair.options(num_returns=2).remote()
    assert ray.get(y) == 2 and ray.get(x) == 1


def test_num_returns_mismatch_is_an_error(shared_cluster):
    @ray.remote(num_returns=3, max_retries=0)
    def two():
        return 1, 2

    refs = two.remote()
    for r in refs:
        with pytest.raises(ValueError, match="num_returns"):
            ray.get(r, timeout=10)


def test_streaming_generator(shared_cluster):
    @ray.remote(num_returns="streaming")
    def gen(n):
        for i in range(n):
            yield i * i

    g = gen.remote(5)
    assert isinstance(g, ray.ObjectRefGenerator)
    refs = list(g)
    assert all(isinstance(r, ray.ObjectRef) for r in refs)
    assert ray.get(refs) == [0, 1, 4, 9, 16]
    assert list(gen.remote(0)) == []


def test_streaming_via_options(shared_cluster):
    @ray.remote
    def gen(n):
        yield from range(n)

    assert [ray.get(r) for r in gen.options(num_returns="streaming").remote(3)] == [0, 1, 2]


def test_streaming_yields_refs_while_task_runs(shared_cluster):
    sig = Signal.remote()

    @ray.remote(num_returns="streaming")
    def gen(sig):
        yield "first"
        ray.get(sig.wait.remote())
        yield "second"

    g = gen.remote(sig)
    # the first value arrives while the task is still blocked before its second yield
    assert ray.get(next(g), timeout=10) == "first"
    ray.get(sig.send.remote())
    assert ray.get(next(g), timeout=10) == "second"
    with pytest.raises(StopIteration):
        next(g)


def test_streaming_error_mid_stream(shared_cluster):
    @ray.remote(num_returns="streaming", max_retries=0)
    def gen():
        yield 1
        yield 2
        raise KeyError("stream broke")

    refs = list(gen.remote())
    assert len(refs) == 3
    assert ray.get(refs[:2]) == [1, 2]
    with pytest.raises(KeyError) as ei:
        ray.get(refs[2])
    assert isinstance(ei.value, rexc.RayTaskError)
    assert "stream broke" in str(ei.value)


def test_streaming_large_values(shared_cluster):
    @ray.remote(num_returns="streaming")
    def gen():
        for i in range(3):
            yield np.full(50_000, i, dtype=np.float64)  # 400 KB each: the shared store

    for i, ref in enumerate(gen.remote()):
        arr = ray.get(ref)
        assert arr.shape == (50_000,) and (arr == i).all()


# ---------------------------------------------------------------- nested tasks


def test_tasks_submitted_together_run_in_parallel(shared_cluster, tmp_path):
    _meet = _make_meet()

    @ray.remote
    def meet(me, other):
        return _meet(str(tmp_path), me, [other], timeout=3)

    # short tasks of the same resource shape first, as a real program would have run,
    # then an idle cluster (every lease handed back)
    for i in range(60):
        ray.get(double.remote(i))
    wait_for_condition(lambda: ray.available_resources().get("CPU") == 2, timeout=5)
    assert ray.get([meet.remote("a", "b"), meet.remote("b", "a")], timeout=15) == [True, True]


def test_nested_tasks_six_parents_on_two_cpus(shared_cluster):
    @ray.remote
    def leaf(i):
        return i

    @ray.remote
    def child(i):
        return sum(ray.get([leaf.remote(i), leaf.remote(1)]))

    @ray.remote
    def parent(i):
        return sum(ray.get([child.remote(i), child.remote(i)]))

    assert ray.cluster_resources()["CPU"] == 2
    refs = [parent.remote(i) for i in range(6)]
    assert ray.get(refs, timeout=20) == [2 * (i + 1) for i in range(6)]


def test_six_blocked_parents_at_once_on_two_cpus(shared_cluster):
    """All six parents are blocked in get at the same time, each waiting on a child that
    is itself blocked: only possible if a blocked task releases its CPU (and hands back
    the tasks queued behind it). Repeated, after short tasks of the same shape."""

    @ray.remote
    def child(sig, started):
        ray.get(started.incr.remote())
        ray.get(sig.wait.remote())
        return 1

    @ray.remote
    def parent(sig, started):
        ray.get(started.incr.remote())
        return ray.get(child.remote(sig, started)) + 1

    for _ in range(6):
        sig, started = Signal.remote(), Counter.remote()
        for i in range(60):  # short tasks of the same shape, then an idle cluster
            ray.get(double.remote(i))
        wait_for_condition(lambda: ray.available_resources().get("CPU") == 2, timeout=5)
        refs = [parent.remote(sig, started) for _ in range(6)]
        try:
            wait_for_condition(lambda c=started: ray.get(c.get.remote()) == 12, timeout=3,
                               message="6 parents and 6 children did not all start")
        finally:
            ray.get(sig.send.remote())
            assert ray.get(refs, timeout=20) == [2] * 6


def test_get_inside_task_of_put_in_driver(shared_cluster):
    ref = ray.put({"k": "v"})

    @ray.remote
    def read(box):
        return ray.get(box[0])["k"]

    assert ray.get(read.remote([ref])) == "v"


# ---------------------------------------------------------------- ObjectRef arguments


def test_top_level_ref_args_are_resolved(shared_cluster):
    @ray.remote
    def kind(x, y=None):
        return type(x).__name__, x, type(y).__name__, y

    assert ray.get(kind.remote(ray.put(5), y=ray.put("s"))) == ("int", 5, "str", "s")
    assert ray.get(kind.remote(double.remote(4))) == ("int", 8, "NoneType", None)


def test_nested_refs_are_passed_as_refs(shared_cluster):
    @ray.remote
    def inspect_(lst, d):
        assert all(isinstance(r, ray.ObjectRef) for r in lst)
        assert isinstance(d["r"], ray.ObjectRef)
        return ray.get(lst) + [ray.get(d["r"])]

    refs = [ray.put(1), double.remote(1)]
    assert ray.get(inspect_.remote(refs, {"r": ray.put(3)})) == [1, 2, 3]


def test_dependent_task_waits_for_its_argument(shared_cluster):
    sig = Signal.remote()

    first = blocked.remote(sig, 10)
    second = double.remote(first)
    ready, _ = ray.wait([second], timeout=0.3)
    assert ready == []
    ray.get(sig.send.remote())
    assert ray.get(second, timeout=10) == 20


def test_chain_of_tasks(shared_cluster):
    ref = ray.put(1)
    for _ in range(10):
        ref = double.remote(ref)
    assert ray.get(ref, timeout=10) == 1024


def test_ref_returned_from_task(shared_cluster):
    @ray.remote
    def make():
        return ray.put("inner")

    outer = ray.get(make.remote())
    assert isinstance(outer, ray.ObjectRef)
    assert ray.get(outer, timeout=10) == "inner"


def test_task_returning_result_of_nested_task_ref(shared_cluster):
    @ray.remote
    def make():
        return [double.remote(21)]

    (inner,) = ray.get(make.remote())
    assert ray.get(inner, timeout=10) == 42


# ---------------------------------------------------------------- large values


def test_large_numpy_arg_and_result(shared_cluster):
    arr = np.arange(300_000, dtype=np.float64)  # 2.4 MB
    assert arr.nbytes > 100 * 1024

    @ray.remote
    def twice(a):
        return a * 2

    out = ray.get(twice.remote(arr), timeout=10)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_array_equal(out, arr * 2)
    assert not out.flags.writeable  # a read-only view of shared memory
    with pytest.raises(ValueError):
        out[0] = 1.0


def test_large_put_is_read_only_view(shared_cluster):
    arr = np.ones((512, 512), dtype=np.float32)  # 1 MB
    ref = ray.put(arr)
    got = ray.get(ref)
    np.testing.assert_array_equal(got, arr)
    assert not got.flags.writeable
    arr[0, 0] = 5  # the stored value is a copy, not the caller's array
    assert ray.get(ref)[0, 0] == 1

    @ray.remote
    def total(a):
        return float(a.sum()), a.flags.writeable

    assert ray.get(total.remote(ref)) == (512 * 512, False)


def test_large_object_inside_container(shared_cluster):
    value = {"a": np.zeros(200_000, dtype=np.uint8), "b": b"x" * 200_000, "c": 7}

    @ray.remote
    def echo(v):
        return v

    out = ray.get(echo.remote(value), timeout=10)
    assert out["c"] == 7 and out["b"] == value["b"]
    np.testing.assert_array_equal(out["a"], value["a"])


def test_large_result_shared_by_several_readers(shared_cluster):
    @ray.remote
    def make():
        return np.arange(100_000, dtype=np.int64)

    @ray.remote
    def total(a):
        return int(a.sum())

    ref = make.remote()
    expected = sum(range(100_000))
    assert ray.get([total.remote(ref) for _ in range(4)], timeout=10) == [expected] * 4


# ---------------------------------------------------------------- pickling by value


def test_closure_and_local_function(shared_cluster):
    factor = 3

    def helper(x):
        return x + 1

    class Point:
        def __init__(self, x):
            self.x = x

    @ray.remote
    def f(p):
        return Point(helper(p.x) * factor)

    out = ray.get(f.remote(Point(1)))
    assert type(out).__name__ == "Point" and out.x == 6


def test_lambda_remote(shared_cluster):
    square = ray.remote(lambda x: x * x)
    assert ray.get(square.remote(7)) == 49


def test_unpicklable_arg_fails_at_remote_naming_it(shared_cluster):
    lock = threading.Lock()
    with pytest.raises(TypeError, match="lock"):
        double.remote(lock)
    with pytest.raises(TypeError, match="lock"):
        double.remote({"key": [1, lock]})
    with pytest.raises(TypeError, match="lock"):
        ray.put(lock)


def test_unpicklable_closure_fails_at_remote_naming_it(shared_cluster):
    my_lock = threading.Lock()

    @ray.remote
    def uses_lock():
        with my_lock:
            return 1

    with pytest.raises(TypeError, match="my_lock"):
        uses_lock.remote()


# ---------------------------------------------------------------- runtime_env


def test_runtime_env_env_vars(shared_cluster):
    @ray.remote
    def env(name):
        return os.environ.get(name)

    opts = {"runtime_env": {"env_vars": {"RAYLITE_TEST_FOO": "bar"}}}
    assert ray.get(env.options(**opts).remote("RAYLITE_TEST_FOO"), timeout=10) == "bar"
    assert ray.get(env.remote("RAYLITE_TEST_FOO")) is None
    other = {"runtime_env": {"env_vars": {"RAYLITE_TEST_FOO": "baz"}}}
    assert ray.get(env.options(**other).remote("RAYLITE_TEST_FOO"), timeout=10) == "baz"


def test_runtime_env_on_actor(shared_cluster):
    @ray.remote(runtime_env={"env_vars": {"RAYLITE_ACTOR_VAR": "42"}})
    class A:
        def env(self):
            return os.environ.get("RAYLITE_ACTOR_VAR")

    assert ray.get(A.remote().env.remote(), timeout=10) == "42"


# ---------------------------------------------------------------- runtime context


def test_runtime_context_in_task(shared_cluster):
    @ray.remote
    def ids():
        ctx = ray.get_runtime_context()
        return ctx.get_task_id(), ctx.get_node_id(), ctx.get_job_id(), ctx.get_actor_id()

    driver_ctx = ray.get_runtime_context()
    (t1, node, job, actor), (t2, *_) = ray.get([ids.remote(), ids.remote()])
    assert isinstance(t1, str) and t1 and t1 != t2
    assert node in {n["NodeID"] for n in ray.nodes()}
    assert node == driver_ctx.get_node_id()
    assert job == driver_ctx.get_job_id()
    assert actor is None


def test_task_id_matches_ref(shared_cluster):
    @ray.remote
    def tid():
        return ray.get_runtime_context().get_task_id()

    ref = tid.remote()
    assert ray.get(ref) == ref.task_id()


def test_cluster_and_available_resources(shared_cluster):
    assert ray.cluster_resources()["CPU"] == 2
    wait_for_condition(lambda: ray.available_resources().get("CPU") == 2, timeout=5)
    ns = ray.nodes()
    assert len(ns) == 1 and ns[0]["Alive"] and ns[0]["NodeManagerAddress"] == "127.0.0.1"
