"""Errors and failures: task errors as both RayTaskError and the user's type, retries of
application errors and of crashed workers, cancellation, Ctrl-C in get, init/shutdown
rules, node and driver deaths.

Tests that start or kill things use their own clusters and come first: the
module-scoped ``shared_cluster`` stays up from its first use to the end of the module.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest
from fixtures import Attempts, Signal, blocked

import raylite as ray
from raylite import exceptions as rexc
from raylite.testing import (
    blocked_in_get,
    raylite_processes,
    shm_leftovers,
    wait_for_condition,
)

pytestmark = pytest.mark.timeout(30)


# ---------------------------------------------------------------- init / shutdown


def test_init_twice_is_an_error():
    ray.init(num_cpus=1)
    try:
        with pytest.raises(RuntimeError, match="ignore_reinit_error"):
            ray.init(num_cpus=1)
        ctx = ray.init(num_cpus=1, ignore_reinit_error=True)
        assert ctx is not None and ray.is_initialized()

        @ray.remote
        def f():
            return 1

        assert ray.get(f.remote(), timeout=10) == 1
    finally:
        ray.shutdown()
    assert not ray.is_initialized()


def test_shutdown_then_init_works():
    @ray.remote
    def f(x):
        return x + 1

    for i in range(3):
        ray.init(num_cpus=1)
        try:
            assert ray.get(f.remote(i), timeout=10) == i + 1
        finally:
            ray.shutdown()
        assert not ray.is_initialized()
    ray.shutdown()  # a second shutdown is a no-op


def test_init_context_manager():
    with ray.init(num_cpus=1) as ctx:
        assert ray.is_initialized()
        assert ctx.address and "raylite" in ctx._repr_html_()
        assert ray.get(ray.put(3)) == 3
    assert not ray.is_initialized()


def test_init_rejects_reserved_labels_and_mixed_node_args():
    with pytest.raises(ValueError):
        ray.init(labels={"raylite.io/node-id": "x"})
    with pytest.raises(ValueError):
        ray.init(num_cpus=1, nodes=[{"num_cpus": 1}])
    assert not ray.is_initialized()


# ---------------------------------------------------------------- crashed workers


def test_worker_killed_mid_task_is_retried(cluster, tmp_path):
    marker = tmp_path / "first-attempt"

    @ray.remote
    def crash_once():
        if not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return os.getpid()

    pid = ray.get(crash_once.remote(), timeout=15)
    assert marker.exists() and psutil.pid_exists(pid)


def test_worker_crash_retries_use_max_retries(cluster):
    attempts = Attempts.remote()

    @ray.remote(max_retries=2)
    def always_crash(attempts):
        ray.get(attempts.incr.remote())
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(rexc.WorkerCrashedError):
        ray.get(always_crash.remote(attempts), timeout=20)
    assert ray.get(attempts.get.remote()) == 3  # the first try and 2 retries


def test_worker_crash_without_retries_raises_worker_crashed(cluster, tmp_path):
    marker = tmp_path / "first-attempt"

    @ray.remote(max_retries=0)
    def crash_once():
        if not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return "never"

    with pytest.raises(rexc.WorkerCrashedError):
        ray.get(crash_once.remote(), timeout=15)
    # the cluster is still usable
    assert ray.get(ray.remote(lambda: "fine").remote(), timeout=10) == "fine"


def test_worker_crash_of_dependency_retried_for_dependent(cluster, tmp_path):
    marker = tmp_path / "first-attempt"

    @ray.remote
    def crash_once():
        if not marker.exists():
            marker.touch()
            os._exit(1)
        return 20

    @ray.remote
    def add_one(x):
        return x + 1

    assert ray.get(add_one.remote(crash_once.remote()), timeout=15) == 21


def test_node_survives_many_worker_crashes(cluster):
    @ray.remote(max_retries=0)
    def crash():
        os._exit(1)

    for _ in range(20):
        for ref in [crash.remote() for _ in range(4)]:
            with pytest.raises(rexc.WorkerCrashedError):
                ray.get(ref, timeout=3)
    assert ray.get(ray.remote(lambda: "alive").remote(), timeout=5) == "alive"
    assert all(n["Alive"] for n in ray.nodes())


# ---------------------------------------------------------------- node and driver deaths


def test_node_killed_tasks_retried_elsewhere(monkeypatch, tmp_path):
    monkeypatch.setenv("RAYLITE_NODE_TIMEOUT_S", "1.0")  # read by the head at start-up
    from raylite.core import driver

    ray.init(nodes=[{"num_cpus": 1, "labels": {"zone": "a"}},
                    {"num_cpus": 1, "labels": {"zone": "b"}}])
    try:
        first = tmp_path / "first-node"

        @ray.remote
        def stuck_first_time():
            node = ray.get_runtime_context().get_node_id()
            if not first.exists():
                first.write_text(node)
                time.sleep(60)  # stands in for long work; its node is killed meanwhile
            return node

        ref = stuck_first_time.remote()
        wait_for_condition(first.exists, timeout=10)
        wait_for_condition(lambda: first.read_text() != "", timeout=5)
        dead = first.read_text()
        driver._State.cluster.kill_node(dead)
        survivor = ray.get(ref, timeout=15)
        assert survivor != dead
        wait_for_condition(lambda: not next(n for n in ray.nodes()
                                            if n["NodeID"] == dead)["Alive"], timeout=5)
        assert ray.cluster_resources()["CPU"] == 1
    finally:
        ray.shutdown()


def test_driver_kill_9_stops_every_process_and_frees_shm(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent("""
        import numpy as np
        import raylite as ray

        ray.init(num_cpus=2)

        @ray.remote
        class A:
            def ping(self):
                return 1

        a = A.remote()
        ray.get(a.ping.remote())
        ref = ray.put(np.zeros(1_000_000))  # in the shared-memory store
        print("ready", flush=True)
        input()
    """))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.getcwd() + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children and shm_leftovers()
        proc.kill()
        proc.wait(5)
        wait_for_condition(lambda: not any(c.is_running() and c.status() != "zombie"
                                           for c in children), timeout=10,
                           message="cluster processes outlived their driver")
        wait_for_condition(lambda: not raylite_processes() and not shm_leftovers(),
                           timeout=10, message="leftover processes or /dev/shm segments")
    finally:
        if proc.poll() is None:
            proc.kill()


# ---------------------------------------------------------------- cancellation


def test_cancel_queued_task(cluster):
    @ray.remote(num_cpus=2)
    def hog():
        time.sleep(30)

    @ray.remote
    def queued():
        return "ran"

    blocker = hog.remote()
    wait_for_condition(lambda: ray.available_resources().get("CPU", 0) == 0, timeout=10)
    ref = queued.remote()
    ray.cancel(ref)
    with pytest.raises(rexc.TaskCancelledError):
        ray.get(ref, timeout=5)
    # it failed while the task it waited behind still runs: the cancel did not wait
    assert ray.wait([blocker], timeout=0)[0] == []
    ray.cancel(blocker)
    with pytest.raises(rexc.TaskCancelledError):
        ray.get(blocker, timeout=5)


def _cancel_one_waiting(refs, tmp_path) -> None:
    """With both CPUs busy running two of ``refs``, cancel one that has not started: it
    must fail with TaskCancelledError at once, and never run."""
    def started():
        return {int(p.name.split("-")[1]) for p in tmp_path.glob("started-[0-9]")}

    wait_for_condition(lambda: len(started()) == 2, timeout=10,
                       message="two of the tasks did not start")
    running = sorted(started())
    (waiting, *_) = sorted(set(range(len(refs))) - set(running))
    ray.cancel(refs[waiting])
    with pytest.raises(rexc.TaskCancelledError):
        ray.get(refs[waiting], timeout=3)
    # it failed while the two tasks ahead of it still run: the cancel did not wait
    assert ray.wait([refs[i] for i in running], num_returns=2, timeout=0)[0] == []
    assert waiting not in started()


def test_cancel_task_queued_behind_running_ones(cluster, tmp_path):
    @ray.remote
    def slow(i):
        (tmp_path / f"started-{i}").touch()
        time.sleep(20)
        return i

    refs = [slow.remote(i) for i in range(4)]  # 4 tasks on 2 CPUs: two of them wait
    _cancel_one_waiting(refs, tmp_path)


def test_cancel_task_pipelined_behind_running_one(cluster, tmp_path):
    @ray.remote
    def task(i, seconds):
        (tmp_path / f"started-{i}").touch()
        time.sleep(seconds)
        return i

    for i in range(60):  # short tasks of this shape first: raylite then pipelines
        ray.get(task.remote(f"quick{i}", 0))
    wait_for_condition(lambda: ray.available_resources().get("CPU") == 2, timeout=5)
    refs = [task.remote(i, 20) for i in range(4)]
    _cancel_one_waiting(refs, tmp_path)


def test_cancel_running_task(cluster):
    @ray.remote
    def sleeper(path):
        open(path, "w").close()
        time.sleep(30)
        return "finished"

    import tempfile

    path = os.path.join(tempfile.mkdtemp(), "started")
    ref = sleeper.remote(path)
    wait_for_condition(lambda: os.path.exists(path), timeout=10)
    ray.cancel(ref)
    with pytest.raises(rexc.TaskCancelledError):  # within 5 s of a 30 s sleep
        ray.get(ref, timeout=5)
    # the worker survived a non-forced cancel and the cluster works
    assert ray.get(ray.remote(lambda: 5).remote(), timeout=10) == 5


@ray.remote
def _nested_sleeper(path: str, depth: int):
    """Submits the next level and waits for it; the innermost sleeps until ``path.go``
    appears. Each level leaves ``path.<depth>.started`` and, when cancelled,
    ``path.<depth>.cancelled`` (the innermost: ``path.finished`` when it ran out)."""
    open(f"{path}.{depth}.started", "w").close()
    try:
        if depth:
            return ray.get(_nested_sleeper.remote(path, depth - 1))
        while not os.path.exists(f"{path}.go"):
            time.sleep(0.01)
        open(f"{path}.finished", "w").close()
        return "finished"
    except rexc.TaskCancelledError:
        open(f"{path}.{depth}.cancelled", "w").close()
        raise


def test_cancel_is_recursive_by_default(cluster, tmp_path):
    """As in Ray: cancelling a task cancels the tasks it submitted, and theirs."""
    path = str(tmp_path / "chain")
    ref = _nested_sleeper.remote(path, 2)
    wait_for_condition(lambda: os.path.exists(f"{path}.0.started"), timeout=15)
    ray.cancel(ref)
    with pytest.raises(rexc.TaskCancelledError):
        ray.get(ref, timeout=10)
    wait_for_condition(lambda: all(os.path.exists(f"{path}.{d}.cancelled")
                                   for d in range(3)), timeout=10)
    open(f"{path}.go", "w").close()  # nothing is left running to see it
    assert ray.get(ray.remote(lambda: 7).remote(), timeout=10) == 7
    assert not os.path.exists(f"{path}.finished")


def test_cancel_not_recursive_leaves_the_children_running(cluster, tmp_path):
    path = str(tmp_path / "chain")
    ref = _nested_sleeper.remote(path, 1)
    wait_for_condition(lambda: os.path.exists(f"{path}.0.started"), timeout=15)
    ray.cancel(ref, recursive=False)
    with pytest.raises(rexc.TaskCancelledError):
        ray.get(ref, timeout=10)
    open(f"{path}.go", "w").close()
    wait_for_condition(lambda: os.path.exists(f"{path}.finished"), timeout=10)
    assert not os.path.exists(f"{path}.0.cancelled")


def test_cancel_force_kills_worker(cluster, tmp_path):
    pid_file = tmp_path / "pid"

    @ray.remote
    def sleeper():
        pid_file.write_text(str(os.getpid()))
        time.sleep(30)

    ref = sleeper.remote()
    wait_for_condition(lambda: pid_file.exists() and pid_file.read_text(), timeout=10)
    pid = int(pid_file.read_text())
    ray.cancel(ref, force=True)
    with pytest.raises(rexc.TaskCancelledError):  # within 5 s of a 30 s sleep
        ray.get(ref, timeout=5)
    wait_for_condition(lambda: not psutil.pid_exists(pid), timeout=5)
    assert ray.get(ray.remote(lambda: 6).remote(), timeout=10) == 6


def test_cancelled_task_is_not_retried(cluster):
    """A cancelled task is not retried even though it has max_retries left."""
    attempts = Attempts.remote()

    @ray.remote(max_retries=3)
    def sleeper(attempts):
        ray.get(attempts.incr.remote())
        time.sleep(30)

    ref = sleeper.remote(attempts)
    wait_for_condition(lambda: ray.get(attempts.get.remote()) == 1, timeout=10)
    ray.cancel(ref, force=True)
    with pytest.raises(rexc.TaskCancelledError):
        ray.get(ref, timeout=5)
    assert ray.get(attempts.get.remote()) == 1


@ray.remote
class _BusyLoop:
    """An async actor whose ``block`` holds its event loop (no await) while the next call
    is handed to that loop and has not begun (an asyncio task whose first step is queued,
    or not yet a task), until the worker has received the cancel of that call. It reads
    the worker's executor (white box): ``ray.cancel`` only sends a message, so nothing
    outside the worker can tell when it has landed."""

    def __init__(self):
        self.ran = []

    async def block(self, queued: str):
        from raylite.core import runtime

        executor = runtime.core.cancel_hook.__self__
        while len(executor.async_tasks) < 2:  # the next call, handed over behind this one
            time.sleep(0.005)
        open(queued, "w").close()
        while not executor.async_cancelled:  # its cancel has arrived
            time.sleep(0.005)

    async def mark(self, x):
        self.ran.append(x)

    async def seen(self):
        return self.ran


def test_cancel_of_an_async_actor_call_before_its_task_exists(cluster, tmp_path):
    """A cancel that comes after the worker handed the call to the actor's loop but
    before it began: the call never runs and raises TaskCancelledError (the cancel was
    queued behind the call's first step, or dropped before its task existed, and the call
    ran to its end)."""
    actor = _BusyLoop.remote()
    queued = tmp_path / "queued"
    blocker = actor.block.remote(str(queued))
    call = actor.mark.remote(1)
    wait_for_condition(queued.exists, 30, message="the call queued on the blocked loop")
    ray.cancel(call)
    with pytest.raises(rexc.TaskCancelledError):
        ray.get(call, timeout=30)
    ray.get(blocker, timeout=30)
    assert ray.get(actor.seen.remote(), timeout=30) == []


def test_cancel_finished_task_is_noop(cluster):
    ref = ray.put(1)
    ray.cancel(ref)
    assert ray.get(ref) == 1
    done = ray.remote(lambda: 2).remote()
    assert ray.get(done, timeout=10) == 2
    ray.cancel(done)
    assert ray.get(done) == 2
    with pytest.raises(TypeError):
        ray.cancel("not a ref")


# ---------------------------------------------------------------- Ctrl-C


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signals reach the main thread only")
def test_keyboard_interrupt_in_get_leaves_cluster_usable(cluster):
    sig = Signal.remote()

    ref = blocked.remote(sig, "released")

    def interrupt_the_blocked_get():
        wait_for_condition(blocked_in_get, timeout=10)
        os.kill(os.getpid(), signal.SIGINT)

    interrupter = threading.Thread(target=interrupt_the_blocked_get, daemon=True)
    interrupter.start()
    with pytest.raises(KeyboardInterrupt):
        ray.get(ref, timeout=20)
    interrupter.join(10)
    assert ray.wait([ref], timeout=0)[0] == []  # the get was interrupted, not answered
    ray.get(sig.send.remote(), timeout=10)
    assert ray.get(ref, timeout=10) == "released"
    assert ray.get(ray.remote(lambda: 1).remote(), timeout=10) == 1


# ---------------------------------------------------------------- task errors


def test_task_error_is_both_ray_task_error_and_user_type(shared_cluster):
    class MyError(Exception):
        pass

    @ray.remote
    def failing_function():
        raise MyError("something specific went wrong")

    with pytest.raises(MyError) as ei:
        ray.get(failing_function.remote())
    err = ei.value
    assert isinstance(err, rexc.RayTaskError)
    assert isinstance(err, rexc.RayliteError) and isinstance(err, rexc.RayError)
    text = str(err)
    assert "something specific went wrong" in text
    assert "failing_function" in text
    # the remote traceback (cloudpickle names by-value code "<dynamic-code>", so no source)
    assert "Traceback (most recent call last)" in text
    assert "in failing_function" in text and "MyError: something specific" in text
    assert err.traceback_str.rstrip() in text
    assert err.args == ("something specific went wrong",)


def test_builtin_exception_types(shared_cluster):
    @ray.remote
    def div(a, b):
        return a / b

    with pytest.raises(ZeroDivisionError):
        ray.get(div.remote(1, 0))
    try:
        ray.get(div.remote(1, 0))
    except rexc.RayTaskError as e:
        assert "ZeroDivisionError" in str(e)
    else:
        pytest.fail("no error")


def test_custom_exception_with_attributes(shared_cluster):
    class CodedError(Exception):
        def __init__(self, code):
            super().__init__(f"code {code}")
            self.code = code

    @ray.remote
    def fail():
        raise CodedError(42)

    with pytest.raises(rexc.RayTaskError) as ei:
        ray.get(fail.remote())
    assert "code 42" in str(ei.value)
    assert isinstance(ei.value, CodedError) and ei.value.code == 42


def test_unpicklable_exception_still_reported(shared_cluster):
    class LockError(Exception):
        def __init__(self):
            super().__init__("holding a lock")
            self.lock = threading.Lock()

    @ray.remote
    def fail():
        raise LockError()

    with pytest.raises(rexc.RayTaskError, match="holding a lock"):
        ray.get(fail.remote())


def test_error_propagates_through_dependent_task(shared_cluster):
    class Upstream(Exception):
        pass

    @ray.remote
    def bad():
        raise Upstream("from upstream")

    @ray.remote
    def consume(x):
        return x

    with pytest.raises(Upstream, match="from upstream"):
        ray.get(consume.remote(bad.remote()))


def test_error_from_nested_task(shared_cluster):
    @ray.remote
    def inner():
        raise KeyError("inner key")

    @ray.remote
    def outer():
        return ray.get(inner.remote())

    with pytest.raises(KeyError) as ei:
        ray.get(outer.remote())
    assert isinstance(ei.value, rexc.RayTaskError)
    assert "inner key" in str(ei.value)


def test_get_of_list_raises_first_error(shared_cluster):
    @ray.remote
    def maybe(i):
        if i == 2:
            raise ValueError("two")
        return i

    with pytest.raises(ValueError, match="two"):
        ray.get([maybe.remote(i) for i in range(4)])


def test_actor_method_error_type(shared_cluster):
    @ray.remote
    class A:
        def boom(self):
            raise IndexError("actor index")

    with pytest.raises(IndexError) as ei:
        ray.get(A.remote().boom.remote())
    assert isinstance(ei.value, rexc.RayTaskError)
    assert "boom" in str(ei.value) and "actor index" in str(ei.value)


def test_exception_hierarchy():
    assert issubclass(rexc.ActorDiedError, rexc.RayActorError)
    assert issubclass(rexc.OwnerDiedError, rexc.ObjectLostError)
    for name in ["RayTaskError", "RayActorError", "ActorDiedError", "ObjectLostError",
                 "OwnerDiedError", "GetTimeoutError", "TaskCancelledError",
                 "ObjectStoreFullError", "OutOfMemoryError", "WorkerCrashedError"]:
        assert issubclass(getattr(rexc, name), rexc.RayliteError)
    assert rexc.RayError is rexc.RayliteError


# ---------------------------------------------------------------- retries of app errors


def test_app_error_not_retried_by_default(shared_cluster):
    attempts = Attempts.remote()

    @ray.remote  # max_retries=3 by default, but only for system failures
    def fail(attempts):
        ray.get(attempts.incr.remote())
        raise ValueError("app error")

    with pytest.raises(ValueError):
        ray.get(fail.remote(attempts), timeout=10)
    assert ray.get(attempts.get.remote()) == 1


def test_retry_exceptions_true(shared_cluster):
    attempts = Attempts.remote()

    @ray.remote(retry_exceptions=True, max_retries=3)
    def flaky(attempts):
        n = ray.get(attempts.incr.remote())
        if n < 3:
            raise ValueError(f"attempt {n}")
        return n

    assert ray.get(flaky.remote(attempts), timeout=10) == 3
    assert ray.get(attempts.get.remote()) == 3


def test_retry_exceptions_exhausted(shared_cluster):
    attempts = Attempts.remote()

    @ray.remote(retry_exceptions=True, max_retries=2)
    def always(attempts):
        n = ray.get(attempts.incr.remote())
        raise ValueError(f"attempt {n}")

    with pytest.raises(ValueError, match="attempt 3"):
        ray.get(always.remote(attempts), timeout=10)
    assert ray.get(attempts.get.remote()) == 3


def test_retry_exceptions_list(shared_cluster):
    class Transient(Exception):
        pass

    class Fatal(Exception):
        pass

    attempts = Attempts.remote()

    @ray.remote(retry_exceptions=[Transient], max_retries=3)
    def f(attempts, exc_type):
        n = ray.get(attempts.incr.remote())
        if n < 3:
            raise exc_type(f"attempt {n}")
        return n

    assert ray.get(f.remote(attempts, Transient), timeout=10) == 3

    fatal_attempts = Attempts.remote()
    with pytest.raises(Fatal, match="attempt 1"):
        ray.get(f.remote(fatal_attempts, Fatal), timeout=10)
    assert ray.get(fatal_attempts.get.remote()) == 1


def test_retry_exceptions_via_options(shared_cluster):
    attempts = Attempts.remote()

    @ray.remote
    def flaky(attempts):
        if ray.get(attempts.incr.remote()) < 2:
            raise RuntimeError("once")
        return "ok"

    opts = {"retry_exceptions": [RuntimeError], "max_retries": 1}
    assert ray.get(flaky.options(**opts).remote(attempts), timeout=10) == "ok"


def test_every_exception_crosses_a_process_unchanged():
    """Errors travel pickled from workers: each comes back with its type, message and
    fields (a class rebuilt from its message said "Task Task ... was cancelled. was
    cancelled.")."""
    import inspect
    import pickle

    checked = 0
    for name, cls in inspect.getmembers(rexc, inspect.isclass):
        if not issubclass(cls, BaseException) or cls.__module__ != rexc.__name__:
            continue
        required = [p for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
                    if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD]
        err = cls(*[f"a{i}" for i in range(len(required))])
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is cls and str(back) == str(err), name
        assert vars(back) == vars(err), name
        checked += 1
    assert checked > 10
    assert str(pickle.loads(pickle.dumps(rexc.TaskCancelledError("ab12")))) == \
        "Task ab12 was cancelled."
