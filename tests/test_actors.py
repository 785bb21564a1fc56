"""Actors: state, per-caller ordering, async and threaded actors, named actors, handles
passed around, kill / crash / restart, constructor failures, multiple returns, streaming.

Tests that kill actor processes use the per-test ``cluster`` fixture and come first: the
module-scoped ``shared_cluster`` stays up from its first use to the end of the module.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import psutil
import pytest
from fixtures import Signal

import raylite as ray
from raylite import exceptions as rexc
from raylite.testing import wait_for_condition

pytestmark = pytest.mark.timeout(30)


@ray.remote
class Counter:
    def __init__(self, start=0):
        self.n = start

    def incr(self, by=1):
        self.n += by
        return self.n

    def get(self):
        return self.n

    def pid(self):
        return os.getpid()

    def sleep(self, s):
        time.sleep(s)
        return "slept"

    def fail(self, msg):
        raise ValueError(msg)


# ---------------------------------------------------------------- death and restarts


def test_kill_then_calls_raise_actor_died(cluster):
    a = Counter.remote()
    pid = ray.get(a.pid.remote(), timeout=10)
    ray.kill(a)
    with pytest.raises(rexc.ActorDiedError):
        ray.get(a.incr.remote(), timeout=10)
    assert isinstance(rexc.ActorDiedError(), rexc.RayActorError)
    wait_for_condition(lambda: not psutil.pid_exists(pid), timeout=5,
                       message="the killed actor's process is still running")


def test_kill_fails_pending_calls(cluster):
    a = Counter.remote()
    ray.get(a.pid.remote(), timeout=10)
    running = a.sleep.remote(30)
    queued = [a.incr.remote() for _ in range(3)]
    ray.kill(a)
    for ref in [running, *queued]:
        with pytest.raises(rexc.ActorDiedError):
            ray.get(ref, timeout=10)


def test_kill_bad_argument(cluster):
    with pytest.raises(TypeError):
        ray.kill("not an actor")


def test_sigkill_actor_process_pending_and_later_calls_fail(cluster):
    a = Counter.remote()
    pid = ray.get(a.pid.remote(), timeout=10)
    pending = a.sleep.remote(30)
    # the call is running (it got there before the kill): wait until the actor is busy
    wait_for_condition(lambda: ray.wait([pending], timeout=0)[0] == [], timeout=5)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(rexc.ActorDiedError):
        ray.get(pending, timeout=10)
    with pytest.raises(rexc.ActorDiedError):
        ray.get(a.incr.remote(), timeout=10)
    # the cluster still works
    b = Counter.remote()
    assert ray.get(b.incr.remote(), timeout=10) == 1


def test_max_restarts_restarts_with_fresh_state(cluster):
    a = Counter.options(max_restarts=1).remote(10)
    assert ray.get(a.incr.remote(), timeout=10) == 11
    pid = ray.get(a.pid.remote())
    os.kill(pid, signal.SIGKILL)

    def new_pid():
        return ray.get(a.pid.remote(), timeout=5) != pid
    wait_for_condition(new_pid, timeout=10, message="the actor did not restart")
    # the constructor ran again with its original arguments: state is reset
    assert ray.get(a.incr.remote(), timeout=10) == 11
    # no restarts left: the next death is final
    os.kill(ray.get(a.pid.remote()), signal.SIGKILL)
    wait_for_condition(lambda: _raises_actor_died(a), timeout=10)
    with pytest.raises(rexc.ActorDiedError):
        ray.get(a.get.remote(), timeout=10)


def _raises_actor_died(a) -> bool:
    try:
        ray.get(a.get.remote(), timeout=5)
    except rexc.ActorDiedError:
        return True
    return False


def test_max_task_retries_retries_call_across_restart(cluster, tmp_path):
    marker = tmp_path / "crashed"

    @ray.remote(max_restarts=1, max_task_retries=1)
    class Crashy:
        def crash_once(self):
            if not marker.exists():
                marker.touch()
                os.kill(os.getpid(), signal.SIGKILL)
            return "recovered"

    a = Crashy.remote()
    assert ray.get(a.crash_once.remote(), timeout=15) == "recovered"


def test_kill_no_restart_false_restarts(cluster):
    a = Counter.options(max_restarts=1).remote()
    assert ray.get(a.incr.remote(), timeout=10) == 1
    pid = ray.get(a.pid.remote())
    ray.kill(a, no_restart=False)
    wait_for_condition(lambda: ray.get(a.pid.remote(), timeout=5) != pid, timeout=10)
    assert ray.get(a.incr.remote(), timeout=10) == 1


def test_constructor_exception_kills_actor(cluster):
    @ray.remote
    class Broken:
        def __init__(self):
            raise ValueError("constructor went wrong")

        def ping(self):
            return "pong"

    a = Broken.remote()
    with pytest.raises(rexc.ActorDiedError) as ei:
        ray.get(a.ping.remote(), timeout=10)
    assert "constructor went wrong" in str(ei.value)
    with pytest.raises(rexc.ActorDiedError, match="constructor went wrong"):
        ray.get(a.ping.remote(), timeout=10)


def test_named_actor_gone_after_kill(cluster):
    a = Counter.options(name="doomed").remote()
    ray.get(a.incr.remote(), timeout=10)
    ray.kill(a)
    wait_for_condition(lambda: _lookup_fails("doomed"), timeout=5)
    # the name is free again
    b = Counter.options(name="doomed").remote()
    assert ray.get(b.incr.remote(), timeout=10) == 1


def _lookup_fails(name: str) -> bool:
    try:
        ray.get_actor(name)
    except ValueError:
        return True
    return False


# ---------------------------------------------------------------- state and ordering


def test_actor_state(shared_cluster):
    a = Counter.remote(5)
    assert ray.get(a.incr.remote()) == 6
    assert ray.get(a.incr.remote(by=4)) == 10
    assert ray.get(a.get.remote()) == 10
    b = Counter.remote()
    assert ray.get(b.get.remote()) == 0  # separate instance, separate state


def test_actor_class_cannot_be_instantiated_directly(shared_cluster):
    with pytest.raises(TypeError):
        Counter()
    a = Counter.remote()
    with pytest.raises(TypeError):
        a.incr()
    with pytest.raises(AttributeError):
        a.no_such_method.remote()


def test_per_caller_ordering(shared_cluster):
    @ray.remote
    class Log:
        def __init__(self):
            self.items = []

        def add(self, i):
            self.items.append(i)

        def items_(self):
            return self.items

    log = Log.remote()
    for i in range(300):
        log.add.remote(i)
    assert ray.get(log.items_.remote(), timeout=10) == list(range(300))


def test_ordering_with_ref_args_not_ready(shared_cluster):
    """A call whose argument is not ready yet still runs in submission order."""
    sig = Signal.remote()

    @ray.remote
    def slow_value(sig):
        ray.get(sig.wait.remote())
        return "slow"

    @ray.remote
    class Log:
        def __init__(self):
            self.items = []

        def add(self, v):
            self.items.append(v)

        def items_(self):
            return self.items

    log = Log.remote()
    log.add.remote(slow_value.remote(sig))
    log.add.remote("fast")
    done = log.items_.remote()
    assert ray.wait([done], timeout=0.3)[0] == []
    ray.get(sig.send.remote())
    assert ray.get(done, timeout=10) == ["slow", "fast"]


def test_per_caller_ordering_from_tasks(shared_cluster):
    @ray.remote
    class Log:
        def __init__(self):
            self.items = []

        def add(self, who, i):
            self.items.append((who, i))

        def items_(self):
            return self.items

    @ray.remote
    def caller(log, who):
        for i in range(50):
            log.add.remote(who, i)
        return ray.get(log.items_.remote())

    log = Log.remote()
    ray.get([caller.remote(log, "a"), caller.remote(log, "b")], timeout=20)
    items = ray.get(log.items_.remote())
    for who in "ab":
        assert [i for w, i in items if w == who] == list(range(50))


def test_actor_method_error_keeps_actor_alive(shared_cluster):
    a = Counter.remote()
    with pytest.raises(ValueError, match="bad call") as ei:
        ray.get(a.fail.remote("bad call"))
    assert isinstance(ei.value, rexc.RayTaskError)
    assert ray.get(a.incr.remote()) == 1


def test_actor_constructor_args_ref_resolved(shared_cluster):
    a = Counter.remote(ray.put(41))
    assert ray.get(a.incr.remote()) == 42


def test_actor_method_ref_args(shared_cluster):
    a = Counter.remote()
    assert ray.get(a.incr.remote(ray.put(5))) == 5


def test_actor_runtime_context(shared_cluster):
    @ray.remote
    class Ctx:
        def ids(self):
            c = ray.get_runtime_context()
            return c.get_actor_id(), c.get_task_id(), c.get_job_id(), c.get_node_id()

    a = Ctx.remote()
    (aid, t1, job, node), (_, t2, _, _) = ray.get([a.ids.remote(), a.ids.remote()])
    assert aid == a._ray_actor_id
    assert t1 and t2 and t1 != t2
    assert job == ray.get_runtime_context().get_job_id()
    assert node == ray.get_runtime_context().get_node_id()


# ---------------------------------------------------------------- async and threaded


def test_async_actor_runs_calls_concurrently(shared_cluster):
    @ray.remote
    class AsyncActor:
        def __init__(self):
            self.arrived = 0
            self.all_here = asyncio.Event()

        async def meet(self, n):
            self.arrived += 1
            if self.arrived == n:
                self.all_here.set()
            await asyncio.wait_for(self.all_here.wait(), 20)  # only if n calls overlap
            return "met"

    a = AsyncActor.remote()
    assert ray.get([a.meet.remote(4) for _ in range(4)], timeout=30) == ["met"] * 4


def test_async_actor_max_concurrency_limits(shared_cluster):
    @ray.remote(max_concurrency=2)
    class AsyncActor:
        def __init__(self):
            self.now = 0
            self.peak = 0

        async def work(self):
            self.now += 1
            self.peak = max(self.peak, self.now)
            await asyncio.sleep(0.1)
            self.now -= 1

        async def peak_(self):
            return self.peak

    a = AsyncActor.remote()
    ray.get([a.work.remote() for _ in range(6)], timeout=10)
    assert ray.get(a.peak_.remote()) == 2


def test_async_actor_awaits_refs(shared_cluster):
    @ray.remote
    def value():
        return 7

    @ray.remote
    class AsyncActor:
        async def add(self, refs):
            return sum([await r for r in refs])

    a = AsyncActor.remote()
    assert ray.get(a.add.remote([value.remote(), value.remote()]), timeout=10) == 14


def test_threaded_actor_max_concurrency(shared_cluster):
    @ray.remote(max_concurrency=3)
    class Threaded:
        def __init__(self):
            self.barrier = threading.Barrier(3, timeout=5)

        def meet(self):
            self.barrier.wait()  # returns only if 3 calls run at the same time
            return threading.get_ident()

    a = Threaded.remote()
    idents = ray.get([a.meet.remote() for _ in range(3)], timeout=10)
    assert len(set(idents)) == 3


def test_sync_actor_runs_one_call_at_a_time(shared_cluster):
    @ray.remote
    class Single:
        def __init__(self):
            self.now = 0
            self.peak = 0

        def work(self):
            self.now += 1
            self.peak = max(self.peak, self.now)
            time.sleep(0.02)
            self.now -= 1

        def peak_(self):
            return self.peak

    a = Single.remote()
    ray.get([a.work.remote() for _ in range(5)], timeout=10)
    assert ray.get(a.peak_.remote()) == 1


# ---------------------------------------------------------------- named actors


def test_named_actor_and_get_actor(shared_cluster):
    a = Counter.options(name="named-counter").remote()
    ray.get(a.incr.remote())
    b = ray.get_actor("named-counter")
    assert ray.get(b.incr.remote()) == 2
    assert b == a


def test_get_if_exists(shared_cluster):
    a = Counter.options(name="gie", get_if_exists=True).remote(100)
    assert ray.get(a.incr.remote()) == 101
    b = Counter.options(name="gie", get_if_exists=True).remote(0)
    assert ray.get(b.incr.remote()) == 102  # the same actor: its constructor did not rerun


def test_duplicate_name_is_an_error(shared_cluster):
    Counter.options(name="dup").remote()
    with pytest.raises(ValueError, match="dup"):
        Counter.options(name="dup").remote()


def test_get_actor_unknown_name(shared_cluster):
    with pytest.raises(ValueError, match="no-such-actor"):
        ray.get_actor("no-such-actor")


def test_named_actor_namespaces(shared_cluster):
    a = Counter.options(name="ns-actor", namespace="ns1").remote(1)
    b = Counter.options(name="ns-actor", namespace="ns2").remote(2)
    assert ray.get(ray.get_actor("ns-actor", namespace="ns1").get.remote()) == 1
    assert ray.get(ray.get_actor("ns-actor", namespace="ns2").get.remote()) == 2
    with pytest.raises(ValueError):
        ray.get_actor("ns-actor")  # not in this job's namespace
    del a, b


def test_get_actor_from_task(shared_cluster):
    a = Counter.options(name="from-task", namespace="shared-ns").remote()
    ray.get(a.incr.remote())

    @ray.remote
    def use():
        return ray.get(ray.get_actor("from-task", namespace="shared-ns").incr.remote())

    assert ray.get(use.remote(), timeout=10) == 2


# ---------------------------------------------------------------- handles passed around


def test_handle_passed_to_task(shared_cluster):
    a = Counter.remote()

    @ray.remote
    def bump(counter, n):
        return ray.get([counter.incr.remote() for _ in range(n)])[-1]

    assert ray.get(bump.remote(a, 5), timeout=10) == 5
    assert ray.get([bump.remote(a, 5) for _ in range(2)], timeout=10)
    assert ray.get(a.get.remote()) == 15


def test_handle_passed_to_actor(shared_cluster):
    @ray.remote
    class Forwarder:
        def __init__(self, target):
            self.target = target

        def forward(self, n):
            return ray.get(self.target.incr.remote(n))

        def set_target(self, target):
            self.target = target

    a = Counter.remote()
    f = Forwarder.remote(a)
    assert ray.get(f.forward.remote(3), timeout=10) == 3
    b = Counter.remote(100)
    ray.get(f.set_target.remote(b))
    assert ray.get(f.forward.remote(1), timeout=10) == 101
    assert ray.get(a.get.remote()) == 3


def test_handle_in_nested_structure(shared_cluster):
    a = Counter.remote()

    @ray.remote
    def bump_all(handles):
        return [ray.get(h["c"].incr.remote()) for h in handles]

    assert ray.get(bump_all.remote([{"c": a}, {"c": a}]), timeout=10) == [1, 2]


def test_actor_creates_actor_and_tasks(shared_cluster):
    @ray.remote
    def square(x):
        return x * x

    @ray.remote
    class Boss:
        def run(self):
            c = Counter.remote()
            ray.get(c.incr.remote(10))
            return ray.get(c.get.remote()) + ray.get(square.remote(3))

    assert ray.get(Boss.remote().run.remote(), timeout=15) == 19


# ---------------------------------------------------------------- returns


def test_method_num_returns(shared_cluster):
    @ray.remote
    class Pair:
        @ray.method(num_returns=2)
        def pair(self, x):
            return x, x + 1

        def single(self):
            return (1, 2)

    a = Pair.remote()
    r1, r2 = a.pair.remote(1)
    assert ray.get([r1, r2]) == [1, 2]
    assert ray.get(a.single.remote()) == (1, 2)
    r1, r2 = a.single.options(num_returns=2).remote()
    assert ray.get(r2) == 2


def test_streaming_actor_method(shared_cluster):
    @ray.remote
    class Gen:
        def count(self, n):
            for i in range(n):
                yield i * 10

    a = Gen.remote()
    g = a.count.options(num_returns="streaming").remote(4)
    assert isinstance(g, ray.ObjectRefGenerator)
    assert [ray.get(r) for r in g] == [0, 10, 20, 30]


def test_streaming_actor_method_error_mid_stream(shared_cluster):
    @ray.remote
    class Gen:
        def count(self):
            yield 1
            raise RuntimeError("generator broke")

    g = Gen.remote().count.options(num_returns="streaming").remote()
    first = next(g)
    assert ray.get(first, timeout=10) == 1
    with pytest.raises(RuntimeError, match="generator broke"):
        ray.get(next(g), timeout=10)
    with pytest.raises(StopIteration):
        next(g)


# ---------------------------------------------------------------- handle counting
def _actor_state(actor_id: str) -> str:
    from raylite.util import state

    return next(a["state"] for a in state.list_actors() if a["actor_id"] == actor_id)


@ray.remote
class Holder:
    def __init__(self):
        self.held = None

    def hold(self, box):
        self.held = box[0]
        return True

    def use(self):
        return ray.get(self.held.incr.remote())

    def drop(self):
        self.held = None
        return True


def test_actor_ends_when_its_last_handle_goes(shared_cluster):
    c = Counter.remote()
    refs = [c.incr.remote() for _ in range(3)]
    aid = c._ray_actor_id
    del c
    assert ray.get(refs) == [1, 2, 3]  # calls made before the handle went still run
    wait_for_condition(lambda: _actor_state(aid) == "DEAD")
    from raylite.util import state

    dead = next(a for a in state.list_actors() if a["actor_id"] == aid)
    assert "out of scope" in dead["error"]


def test_a_borrowed_handle_keeps_the_actor(shared_cluster):
    c = Counter.remote()
    aid = c._ray_actor_id
    holder = Holder.remote()
    assert ray.get(holder.hold.remote([c]))
    del c
    assert ray.get(holder.use.remote()) == 1  # alive: the holder borrows a handle
    assert _actor_state(aid) == "ALIVE"
    ray.get(holder.drop.remote())
    wait_for_condition(lambda: _actor_state(aid) == "DEAD")


def test_named_and_detached_actors_outlive_their_handles(shared_cluster):
    named = Counter.options(name="kept").remote()
    detached = Counter.options(lifetime="detached").remote()
    ids = [named._ray_actor_id, detached._ray_actor_id]
    ray.get([named.incr.remote(), detached.incr.remote()])
    del named, detached
    dropped = Counter.remote()
    gone = dropped._ray_actor_id
    del dropped
    wait_for_condition(lambda: _actor_state(gone) == "DEAD")  # the control ends...
    assert [_actor_state(i) for i in ids] == ["ALIVE", "ALIVE"]  # ...these do not
    assert ray.get(ray.get_actor("kept").incr.remote()) == 2
    for i in ids:
        ray.kill(ray.ActorHandle(bytes.fromhex(i), {"class_name": "Counter", "methods": {}}))
