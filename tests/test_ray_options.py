"""Ray's options that change behaviour: mistyped keywords raise with the closest valid
one; max_calls, max_pending_calls, concurrency_groups and wait(fetch_local=) do what
Ray's do (real worker processes, real actors, two real nodes).

Tests that start their own cluster come first: the module-scoped ``shared_cluster``
stays up from its first use to the end of the module."""

from __future__ import annotations

import collections
import os
import threading

import numpy as np
import psutil
import pytest
from fixtures import Signal

import raylite as ray
from raylite import exceptions as rexc
from raylite.testing import wait_for_condition

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------- mistyped keywords

def test_init_names_the_keyword_it_does_not_know():
    with pytest.raises(TypeError, match="did you mean 'num_cpus'"):
        ray.init(num_cpu=2)
    with pytest.raises(TypeError, match="'no_such_option'"):
        ray.init(no_such_option=1)
    assert not ray.is_initialized()


def test_init_accepts_the_ray_options_it_documents_as_ignored():
    for name in ("include_dashboard", "logging_level", "_temp_dir"):
        assert name in ray.init.__doc__
    with ray.init(num_cpus=1, include_dashboard=False, logging_level="INFO"):
        assert ray.is_initialized()


# ---------------------------------------------------------------- wait(fetch_local=)

def test_wait_fetch_local_pulls_values_from_other_nodes(two_nodes):
    from raylite.core import store

    here = ray.get_runtime_context().get_node_id()

    @ray.remote(label_selector={"zone": "b"})
    def make(n):
        return np.full(n, 7.0)  # 4 MB: in node b's store

    def local_copy(ref):
        return os.path.join(store.node_dir(two_nodes.session, here), ref.hex())

    far = make.remote(500_000)
    ready, _ = ray.wait([far], fetch_local=False, timeout=30)
    assert ready == [far] and not os.path.exists(local_copy(far))  # computed, not here

    near = make.remote(500_000)
    ready, not_ready = ray.wait([near], timeout=30)  # fetch_local=True (the default)
    assert ready == [near] and not not_ready
    assert os.path.exists(local_copy(near))
    assert float(ray.get(near)[0]) == 7.0

    refs = [make.remote(500_000) for _ in range(3)]
    ready, not_ready = ray.wait(refs, num_returns=3, timeout=30)
    assert ready == refs and all(os.path.exists(local_copy(r)) for r in refs)


def test_wait_fetch_local_times_out_on_unfinished_work(two_nodes):
    sig = Signal.remote()

    @ray.remote(label_selector={"zone": "b"})
    def gated(signal):
        ray.get(signal.wait.remote())
        return np.zeros(500_000)

    ref = gated.remote(sig)
    ready, not_ready = ray.wait([ref], timeout=0.2)
    assert not ready and not_ready == [ref]
    ray.get(sig.send.remote())
    assert ray.wait([ref], timeout=30)[0] == [ref]


# ---------------------------------------------------------------- with one cluster
# (the module-scoped shared_cluster stays up from here to the end of the module)

def test_remote_and_options_name_the_keyword_they_do_not_know():
    with pytest.raises(TypeError, match="did you mean 'num_cpus'"):
        ray.remote(num_cpu=1)(lambda: None)
    with pytest.raises(TypeError, match="did you mean 'max_retries'"):
        ray.remote(lambda: None).options(max_retry=1)

    class A:
        def f(self):
            return 1

    with pytest.raises(TypeError, match="did you mean 'max_concurrency'"):
        ray.remote(A).options(max_concurency=2)
    with pytest.raises(TypeError, match="did you mean 'max_restarts'"):
        ray.remote(max_restart=1)(A)
    with pytest.raises(TypeError, match="did you mean 'concurrency_group'"):
        ray.method(concurrency_grop="io")
    for bad in ({"max_calls": -1}, {"max_calls": 1.5}):
        with pytest.raises(ValueError, match="max_calls"):
            ray.remote(**bad)(lambda: None)
    for bad in ({"max_pending_calls": 0}, {"concurrency_groups": {"io": 0}},
                {"concurrency_groups": ["io"]}, {"max_concurrency": 0}):
        with pytest.raises(ValueError):
            ray.remote(**bad)(A)


def test_actor_method_options_name_the_keyword_they_do_not_know(shared_cluster):
    @ray.remote(num_cpus=0)
    class A:
        def f(self):
            return 1

    a = A.remote()
    with pytest.raises(TypeError, match="did you mean 'num_returns'"):
        a.f.options(num_return=2)
    assert ray.get(a.f.options(name="ignored").remote(), timeout=30) == 1


# ---------------------------------------------------------------- max_calls

def test_max_calls_retires_each_worker_after_n_calls(shared_cluster):
    @ray.remote(max_calls=2, max_retries=0)
    def pid(_=None):
        return os.getpid()

    one_by_one = [ray.get(pid.remote(), timeout=30) for _ in range(6)]
    # a worker runs two calls, then a fresh one takes over
    assert one_by_one[0::2] == one_by_one[1::2]
    assert len(set(one_by_one)) == 3
    wait_for_condition(lambda: not any(psutil.pid_exists(p) for p in one_by_one), timeout=10)
    # many at once: none is lost (max_retries=0), no worker runs more than two
    counts = collections.Counter(ray.get([pid.remote(i) for i in range(16)], timeout=60))
    assert sum(counts.values()) == 16 and max(counts.values()) <= 2


def test_functions_without_max_calls_keep_their_workers(shared_cluster):
    @ray.remote(max_calls=1)
    def limited():
        return os.getpid()

    @ray.remote
    def unlimited():
        return os.getpid()

    assert len({ray.get(limited.remote(), timeout=30) for _ in range(3)}) == 3
    assert len({ray.get(unlimited.remote(), timeout=30) for _ in range(3)}) == 1


# ---------------------------------------------------------------- max_pending_calls

def test_max_pending_calls_refuses_calls_past_the_limit(shared_cluster):
    @ray.remote(num_cpus=0, max_pending_calls=2)
    class Slow:
        def wait(self, signal):
            ray.get(signal.wait.remote())
            return "done"

    sig = Signal.remote()
    a = Slow.remote()
    first, second = a.wait.remote(sig), a.wait.remote(sig)
    with pytest.raises(rexc.PendingCallsLimitExceeded, match="max_pending_calls=2"):
        a.wait.remote(sig)
    ray.get(sig.send.remote())
    assert ray.get([first, second], timeout=30) == ["done", "done"]
    assert ray.get(a.wait.remote(sig), timeout=30) == "done"  # room again


def test_max_pending_calls_comes_from_options_and_named_handles(shared_cluster):
    @ray.remote(num_cpus=0)
    class Slow:
        async def wait(self, signal):
            await signal.wait.remote()

    sig = Signal.remote()
    Slow.options(name="pending-limited", max_pending_calls=1).remote()
    a = ray.get_actor("pending-limited")
    pending = a.wait.remote(sig)
    with pytest.raises(rexc.PendingCallsLimitExceeded):
        a.wait.remote(sig)
    ray.get(sig.send.remote())
    ray.get(pending, timeout=30)
    ray.kill(a)


# ---------------------------------------------------------------- concurrency groups

@ray.remote(num_cpus=0, concurrency_groups={"io": 2, "ctl": 1})
class Threaded:
    def __init__(self):
        self.lock = threading.Lock()
        self.running = collections.Counter()
        self.peak = collections.Counter()

    def _enter(self, group):
        with self.lock:
            self.running[group] += 1
            self.peak[group] = max(self.peak[group], self.running[group])

    def _leave(self, group):
        with self.lock:
            self.running[group] -= 1

    def block(self, signal, group="default"):
        self._enter(group)
        try:
            ray.get(signal.wait.remote())
        finally:
            self._leave(group)
        return threading.current_thread().name

    @ray.method(concurrency_group="io")
    def io_block(self, signal):
        return self.block(signal, "io")

    @ray.method(concurrency_group="ctl")
    def stats(self):
        return dict(self.running), dict(self.peak)

    def where(self):
        return threading.current_thread().name


def test_threaded_groups_run_beside_a_blocked_default_group(shared_cluster):
    sig = Signal.remote()
    a = Threaded.remote()
    blocked = a.block.remote(sig)
    wait_for_condition(lambda: ray.get(a.stats.remote())[0].get("default") == 1)
    # the default group (max_concurrency=1) is busy; another group still runs
    assert ray.get(a.where.options(concurrency_group="io").remote(), timeout=30) \
        .startswith("raylite-io")
    queued = a.where.remote()  # default group: behind the blocked call
    ready, _ = ray.wait([queued], timeout=0.3)
    assert not ready
    ray.get(sig.send.remote())
    assert ray.get(blocked, timeout=30).startswith("raylite-actor")
    assert ray.get(queued, timeout=30).startswith("raylite-actor")


def test_each_group_has_its_own_limit(shared_cluster):
    sig = Signal.remote()
    a = Threaded.remote()
    calls = [a.io_block.remote(sig) for _ in range(3)]
    wait_for_condition(lambda: ray.get(a.stats.remote())[0].get("io") == 2)
    ray.get(sig.send.remote())
    ray.get(calls, timeout=30)
    running, peak = ray.get(a.stats.remote(), timeout=30)
    assert peak["io"] == 2 and running["io"] == 0  # two at a time, never three


@ray.remote(num_cpus=0, concurrency_groups={"io": 1})
class Async:
    def __init__(self):
        self.order = []

    async def wait(self, signal, tag):
        self.order.append(("start", tag))
        await signal.wait.remote()
        self.order.append(("end", tag))
        return tag

    @ray.method(concurrency_group="io")
    async def io_wait(self, signal, tag):
        return await self.wait(signal, tag)

    @ray.method(concurrency_group="io")
    async def io_ping(self):
        return "pong"

    def block_loop(self, signal):
        ray.get(signal.wait.remote())  # a sync call blocks its group's event loop
        return "unblocked"

    async def log(self):
        return list(self.order)


def test_async_groups_have_their_own_event_loops(shared_cluster):
    sig = Signal.remote()
    a = Async.remote()
    blocked = a.block_loop.remote(sig)  # holds the default group's loop
    assert ray.get(a.io_ping.remote(), timeout=30) == "pong"
    ray.get(sig.send.remote())
    assert ray.get(blocked, timeout=30) == "unblocked"


def test_async_group_limit(shared_cluster):
    sig = Signal.remote()
    a = Async.remote()
    first = a.io_wait.remote(sig, 1)
    second = a.io_wait.remote(sig, 2)
    default = a.wait.options(concurrency_group=None).remote(sig, 3)
    wait_for_condition(lambda: ("start", 3) in ray.get(a.log.remote()))
    assert ("start", 2) not in ray.get(a.log.remote())  # io runs one at a time
    ray.get(sig.send.remote())
    assert ray.get([first, second, default], timeout=30) == [1, 2, 3]
    log = ray.get(a.log.remote())
    assert log.index(("end", 1)) < log.index(("start", 2))


def test_concurrency_group_names_are_checked(shared_cluster):
    a = Async.remote()
    with pytest.raises(ValueError, match="Unknown concurrency group 'nope'"):
        a.io_ping.options(concurrency_group="nope")

    @ray.remote(num_cpus=0)
    class Undeclared:
        @ray.method(concurrency_group="io")
        def f(self):
            return 1

    with pytest.raises(ValueError, match="does not declare"):
        Undeclared.remote()
    assert ray.get(Undeclared.options(concurrency_groups={"io": 1}).remote().f.remote(),
                   timeout=30) == 1
