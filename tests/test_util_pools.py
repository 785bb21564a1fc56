"""raylite.util.ActorPool, raylite.util.queue.Queue and raylite.util.multiprocessing.Pool
on real actors and tasks (one 2-CPU cluster for the module)."""

from __future__ import annotations

import os

import pytest

import raylite as ray
from raylite.testing import SignalActor
from raylite.util import ActorPool
from raylite.util.multiprocessing import Pool
from raylite.util.multiprocessing import TimeoutError as PoolTimeout
from raylite.util.queue import Empty, Full, Queue

pytestmark = pytest.mark.timeout(60)

Signal = ray.remote(num_cpus=0)(SignalActor)


@ray.remote(num_cpus=0)
class Worker:
    def double(self, x):
        return 2 * x

    def gated(self, x, signal):
        if signal is not None:
            ray.get(signal.wait.remote())
        return x

    def fail(self, x):
        raise ValueError(f"bad {x}")

    def pid(self, _):
        return os.getpid()


# ---------------------------------------------------------------- ActorPool

def test_actor_pool_map_keeps_order_with_more_values_than_actors(shared_cluster):
    pool = ActorPool([Worker.remote(), Worker.remote()])
    assert list(pool.map(lambda a, v: a.double.remote(v), range(7))) == \
        [0, 2, 4, 6, 8, 10, 12]
    assert not pool.has_next()
    assert pool.has_free()


def test_actor_pool_map_uses_every_actor(shared_cluster):
    actors = [Worker.remote(), Worker.remote()]
    pids = set(ActorPool(actors).map(lambda a, v: a.pid.remote(v), range(6)))
    assert pids == set(ray.get([a.pid.remote(0) for a in actors]))


def test_actor_pool_map_unordered_yields_what_finishes_first(shared_cluster):
    sig = Signal.remote()
    pool = ActorPool([Worker.remote(), Worker.remote()])
    # value 0 is held until the signal; 1, 2, 3 run on the other actor meanwhile
    gen = pool.map_unordered(lambda a, v: a.gated.remote(v, sig if v == 0 else None),
                             range(4))
    first_three = [next(gen) for _ in range(3)]
    assert sorted(first_three) == [1, 2, 3]
    ray.get(sig.send.remote())
    assert list(gen) == [0]


def test_actor_pool_submit_get_next_and_idle_actors(shared_cluster):
    a, b = Worker.remote(), Worker.remote()
    pool = ActorPool([a, b])
    assert pool.has_free() and not pool.has_next()
    with pytest.raises(StopIteration):
        pool.get_next()
    for v in (10, 20, 30):  # the third waits for an actor
        pool.submit(lambda actor, v: actor.double.remote(v), v)
    assert pool.has_next() and not pool.has_free() and pool.pop_idle() is None
    assert [pool.get_next(), pool.get_next(), pool.get_next()] == [20, 40, 60]
    taken = pool.pop_idle()
    assert taken in (a, b) and pool.has_free()
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(a if taken is b else b)
    pool.push(taken)
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(taken)


def test_actor_pool_timeouts_and_dropping_a_submission(shared_cluster):
    sig = Signal.remote()
    pool = ActorPool([Worker.remote()])
    pool.submit(lambda a, v: a.gated.remote(v, sig), 1)
    pool.submit(lambda a, v: a.gated.remote(v, None), 2)
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.2)
    assert pool.has_next()  # still there: not ignored
    with pytest.raises(TimeoutError, match="dropped"):
        pool.get_next(timeout=0.05, ignore_if_timedout=True)
    ray.get(sig.send.remote())
    assert pool.get_next() == 2  # the dropped submission's result is never returned
    assert not pool.has_next()


def test_actor_pool_errors_reach_the_caller_and_the_pool_goes_on(shared_cluster):
    pool = ActorPool([Worker.remote()])
    pool.submit(lambda a, v: a.fail.remote(v), 1)
    pool.submit(lambda a, v: a.double.remote(v), 2)
    with pytest.raises(ValueError, match="bad 1"):
        pool.get_next()
    assert pool.get_next() == 4


def test_actor_pool_get_next_after_unordered_is_refused(shared_cluster):
    pool = ActorPool([Worker.remote(), Worker.remote()])
    pool.submit(lambda a, v: a.double.remote(v), 1)
    pool.submit(lambda a, v: a.double.remote(v), 2)
    got = {pool.get_next_unordered(), pool.get_next_unordered()}
    assert got == {2, 4}
    pool.submit(lambda a, v: a.double.remote(v), 3)
    assert pool.get_next() == 6
    with pytest.raises(StopIteration):
        pool.get_next_unordered()


def test_actor_pool_with_multiple_returns(shared_cluster):
    @ray.remote(num_cpus=0)
    class Two:
        @ray.method(num_returns=2)
        def split(self, x):
            return x, -x

    pool = ActorPool([Two.remote()])
    assert list(pool.map_unordered(lambda a, v: a.split.remote(v), [1, 2])) in (
        [[1, -1], [2, -2]], [[2, -2], [1, -1]])


# ---------------------------------------------------------------- Queue

def test_queue_is_fifo_with_sizes(shared_cluster):
    q = Queue()
    assert q.empty() and q.qsize() == 0 and len(q) == 0 and not q.full()
    for i in range(5):
        q.put(i)
    assert q.size() == 5 and len(q) == 5 and not q.empty()
    assert [q.get() for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(Empty):
        q.get(block=False)


def test_queue_maxsize_full_and_timeouts(shared_cluster):
    q = Queue(maxsize=2)
    q.put_nowait("a")
    q.put("b", block=False)
    assert q.full()
    with pytest.raises(Full):
        q.put_nowait("c")
    with pytest.raises(Full):
        q.put("c", timeout=0.1)
    assert q.get(timeout=1) == "a"
    q.put("c", timeout=1)
    assert [q.get(), q.get()] == ["b", "c"]
    with pytest.raises(Empty):
        q.get(timeout=0.1)
    with pytest.raises(ValueError, match="non-negative"):
        q.get(timeout=-1)
    with pytest.raises(ValueError, match="non-negative"):
        q.put(1, timeout=-1)


def test_queue_batches_are_all_or_nothing(shared_cluster):
    q = Queue(maxsize=3)
    q.put_nowait_batch([1, 2])
    with pytest.raises(Full, match="Cannot add 2 items"):
        q.put_nowait_batch([3, 4])
    assert q.qsize() == 2
    with pytest.raises(Empty, match="Cannot get 3 items"):
        q.get_nowait_batch(3)
    assert q.qsize() == 2
    assert q.get_nowait_batch(2) == [1, 2]
    assert q.get_nowait_batch(0) == []
    with pytest.raises(TypeError):
        q.put_nowait_batch(5)
    with pytest.raises(TypeError):
        q.get_nowait_batch("2")
    with pytest.raises(ValueError):
        q.get_nowait_batch(-1)


def test_queue_blocked_get_in_a_task_wakes_on_put(shared_cluster):
    q = Queue()

    @ray.remote(num_cpus=0)
    def consumer(queue):
        return queue.get(timeout=30)  # blocks in the queue's actor until an item comes

    ref = consumer.remote(q)
    q.put({"item": 1})
    assert ray.get(ref, timeout=30) == {"item": 1}
    assert q.empty()


def test_queue_blocked_put_in_a_task_waits_for_room(shared_cluster):
    q = Queue(maxsize=1)
    q.put("first")

    @ray.remote(num_cpus=0)
    def producer(queue):
        queue.put("second", timeout=30)
        return "put"

    ref = producer.remote(q)
    ready, _ = ray.wait([ref], timeout=0.3)
    assert not ready  # no room: the put waits
    assert q.get() == "first"
    assert ray.get(ref, timeout=30) == "put"
    assert q.get() == "second"


def test_queue_from_async_code_and_actor_options(shared_cluster):
    q = Queue(actor_options={"num_cpus": 0, "name": "util-test-queue"})
    assert ray.get_actor("util-test-queue") == q.actor

    @ray.remote(num_cpus=0)
    class AsyncUser:
        async def roundtrip(self, queue):
            await queue.put_async(7)
            first = await queue.get_async(timeout=10)
            try:
                await queue.get_async(block=False)
            except Empty:
                return first, "empty"
            return first, "not empty"

    assert ray.get(AsyncUser.remote().roundtrip.remote(q), timeout=30) == (7, "empty")
    q.shutdown()
    assert q.actor is None


def test_queue_shutdown_ends_its_actor(shared_cluster):
    q = Queue()
    actor = q.actor
    q.put(1)
    q.shutdown(force=True)
    with pytest.raises(ray.exceptions.ActorDiedError):
        ray.get(actor.qsize.remote(), timeout=10)


# ---------------------------------------------------------------- multiprocessing.Pool

def _square(x):
    return x * x


def _add(a, b):
    return a + b


def _fail_on_3(x):
    if x == 3:
        raise KeyError(f"three {x}")
    return x


_STATE = {}


def _init_state(value):
    _STATE["value"] = value


def _read_state(_):
    return _STATE.get("value")


def _actor_id(_):
    return ray.get_runtime_context().get_actor_id()


def test_pool_map_starmap_apply(shared_cluster):
    with Pool(processes=2) as pool:
        assert pool.map(_square, range(10)) == [x * x for x in range(10)]
        assert pool.map(_square, iter(range(5)), chunksize=2) == [0, 1, 4, 9, 16]
        assert pool.map(_square, []) == []
        assert pool.starmap(_add, [(1, 2), (3, 4)]) == [3, 7]
        assert pool.apply(_add, (1, 2)) == 3
        assert pool.apply(_add, (), {"a": 5, "b": 6}) == 11


def test_pool_spreads_work_over_its_processes(shared_cluster):
    with Pool(processes=2) as pool:
        ids = set(pool.map(_actor_id, range(8), chunksize=1))
    assert len(ids) == 2


def test_pool_async_results_and_callbacks(shared_cluster):
    got = []
    with Pool(processes=1) as pool:
        r = pool.apply_async(_add, (2, 3), callback=got.append)
        assert r.get(timeout=30) == 5 and r.ready() and r.successful()
        assert got == [5]  # the callback ran before the result was ready
        m = pool.map_async(_square, range(4), callback=got.append)
        m.wait(30)
        assert m.ready() and m.get() == [0, 1, 4, 9] and got[-1] == [0, 1, 4, 9]
        s = pool.starmap_async(_add, [(1, 1)])
        assert s.get(30) == [2]
        errors = []
        e = pool.map_async(_fail_on_3, range(5), error_callback=errors.append)
        with pytest.raises(KeyError, match="three 3"):
            e.get(30)
        assert not e.successful() and isinstance(errors[0], KeyError)


def test_pool_async_result_not_ready(shared_cluster):
    sig = Signal.remote()
    with Pool(processes=1) as pool:
        r = pool.apply_async(ray.get, (sig.wait.remote(),))
        with pytest.raises(PoolTimeout):
            r.get(timeout=0.2)
        assert not r.ready()
        with pytest.raises(ValueError, match="not ready"):
            r.successful()
        ray.get(sig.send.remote())
        assert r.get(timeout=30) is None and r.successful()


def test_pool_errors_carry_the_remote_traceback(shared_cluster):
    with Pool(processes=1) as pool:
        with pytest.raises(KeyError) as info:
            pool.map(_fail_on_3, range(5))
        assert "_fail_on_3" in str(info.value.__cause__)


def test_pool_imap_ordered_and_unordered(shared_cluster):
    with Pool(processes=2) as pool:
        assert list(pool.imap(_square, range(6), chunksize=2)) == [0, 1, 4, 9, 16, 25]
        assert sorted(pool.imap_unordered(_square, range(6))) == [0, 1, 4, 9, 16, 25]
        it = pool.imap(_fail_on_3, range(5))
        assert [next(it), next(it), next(it)] == [0, 1, 2]
        with pytest.raises(KeyError):
            next(it)
        assert list(it) == [4]  # the items after the failing one still come


def test_pool_imap_reads_its_input_lazily(shared_cluster):
    def naturals():
        n = 0
        while True:
            yield n
            n += 1

    with Pool(processes=1) as pool:
        it = pool.imap(_square, naturals())
        assert [it.next(timeout=30) for _ in range(5)] == [0, 1, 4, 9, 16]


def test_pool_initializer_runs_in_each_process(shared_cluster):
    with Pool(processes=2, initializer=_init_state, initargs=("ready",)) as pool:
        assert pool.map(_read_state, range(6), chunksize=1) == ["ready"] * 6


def test_pool_maxtasksperchild_replaces_processes(shared_cluster):
    with Pool(processes=1, maxtasksperchild=1) as pool:
        ids = pool.map(_actor_id, range(3), chunksize=1)
    assert len(set(ids)) == 3


def test_pool_close_join_and_terminate(shared_cluster):
    pool = Pool(processes=1)
    with pytest.raises(ValueError, match="still running"):
        pool.join()
    r = pool.map_async(_square, range(3))
    pool.close()
    with pytest.raises(ValueError, match="not running"):
        pool.apply(_square, (1,))
    pool.join()
    assert r.get(timeout=0) == [0, 1, 4]  # close lets submitted work finish

    sig = Signal.remote()
    with Pool(processes=1) as pool:
        blocked = pool.apply_async(ray.get, (sig.wait.remote(),))
    with pytest.raises(RuntimeError, match="terminated"):
        blocked.get(timeout=30)  # terminate (the with block) fails unfinished work


def test_pool_checks_its_arguments(shared_cluster):
    with pytest.raises(ValueError, match="CPUs"):
        Pool(processes=3)
    with pytest.raises(ValueError):
        Pool(processes=0)
    with Pool(processes=3, ray_remote_args={"num_cpus": 0}) as pool:
        assert pool.map(_square, range(3)) == [0, 1, 4]
    with Pool(processes=1) as pool:
        with pytest.raises(TypeError):
            pool.map(5, [1])
