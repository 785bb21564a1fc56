"""Worker output (stdout and stderr of tasks and actors) is forwarded to the driver with a
``(pid=..., node=...)`` prefix, written to ``sys.stdout`` by the driver's IO thread."""

from __future__ import annotations

import os
import sys
import uuid

import pytest

import raylite as ray
from raylite.testing import wait_for_condition

pytestmark = pytest.mark.timeout(30)


class Captured:
    """Accumulates what capsys sees, so it can be awaited with wait_for_condition."""

    def __init__(self, capsys):
        self.capsys = capsys
        self.out = ""
        self.err = ""

    def read(self) -> str:
        c = self.capsys.readouterr()
        self.out += c.out
        self.err += c.err
        return self.out + self.err

    def wait_for(self, *needles: str, timeout: float = 10.0) -> str:
        wait_for_condition(lambda: all(n in self.read() for n in needles), timeout=timeout,
                           message=f"{needles} never reached the driver; got {self.out!r}")
        return self.out + self.err

    def lines_with(self, needle: str) -> list[str]:
        return [ln for ln in (self.out + self.err).splitlines() if needle in ln]


@pytest.fixture
def captured(capsys):
    return Captured(capsys)


def _marker() -> str:
    return f"marker-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------- own clusters (first)


@pytest.mark.timeout(60)
def test_first_output_after_init_is_forwarded(capsys):
    """Right after init, a task's print reaches the driver: in 12 fresh clusters."""
    captured = Captured(capsys)

    @ray.remote
    def hello(m):
        print(m, flush=True)

    for _ in range(12):
        m = _marker()
        ray.init(num_cpus=1)
        try:
            ray.get(hello.remote(m), timeout=10)
            captured.wait_for(m, timeout=2)
        finally:
            ray.shutdown()


# ---------------------------------------------------------------- shared cluster


def test_task_print_forwarded_with_pid_prefix(shared_cluster, captured):
    @ray.remote
    def hello(m):
        print(m)
        return os.getpid()

    m = _marker()
    pid = ray.get(hello.remote(m), timeout=10)
    captured.wait_for(m)
    (line,) = captured.lines_with(m)
    assert line.startswith(f"(pid={pid}")
    assert line.endswith(m)
    node = ray.get_runtime_context().get_node_id()
    assert f"node={node}" in line


def test_worker_stderr_forwarded(shared_cluster, captured):
    @ray.remote
    def warn(m):
        print(m, file=sys.stderr, flush=True)
        return os.getpid()

    m = _marker()
    pid = ray.get(warn.remote(m), timeout=10)
    captured.wait_for(m)
    (line,) = captured.lines_with(m)
    assert f"(pid={pid}" in line


def test_actor_print_forwarded(shared_cluster, captured):
    @ray.remote
    class Talker:
        def __init__(self, m):
            print(f"{m}-init")

        def say(self, m):
            print(f"{m}-say")
            return os.getpid()

    m = _marker()
    a = Talker.remote(m)
    pid = ray.get(a.say.remote(m), timeout=10)
    captured.wait_for(f"{m}-init", f"{m}-say")
    for suffix in ("init", "say"):
        (line,) = captured.lines_with(f"{m}-{suffix}")
        assert line.startswith(f"(pid={pid}")


def test_many_lines_arrive_in_order(shared_cluster, captured):
    @ray.remote
    def chatty(m, n):
        for i in range(n):
            print(f"{m} line {i}")
        return os.getpid()

    m = _marker()
    pid = ray.get(chatty.remote(m, 200), timeout=10)
    captured.wait_for(f"{m} line 199")
    lines = captured.lines_with(m)
    assert [ln.split(" line ")[1] for ln in lines] == [str(i) for i in range(200)]
    assert all(ln.startswith(f"(pid={pid}") for ln in lines)


def test_output_of_parallel_tasks_each_prefixed(shared_cluster, captured):
    @ray.remote
    def hello(m, i):
        print(f"{m} from {i}", flush=True)
        return os.getpid()

    m = _marker()
    pids = ray.get([hello.remote(m, i) for i in range(4)], timeout=10)
    captured.wait_for(*[f"{m} from {i}" for i in range(4)])
    for i, pid in enumerate(pids):
        (line,) = captured.lines_with(f"{m} from {i}")
        assert line.startswith(f"(pid={pid}")


def test_output_of_failing_task_forwarded(shared_cluster, captured):
    @ray.remote(max_retries=0)
    def fail(m):
        print(f"{m} before failing", flush=True)
        raise ValueError("fails after printing")

    m = _marker()
    with pytest.raises(ValueError):
        ray.get(fail.remote(m), timeout=10)
    captured.wait_for(f"{m} before failing")


def test_partial_line_flushed_when_task_ends(shared_cluster, captured):
    @ray.remote
    def no_newline(m):
        sys.stdout.write(m)  # no newline, no explicit flush
        return os.getpid()

    m = _marker()
    ray.get(no_newline.remote(m), timeout=10)
    captured.wait_for(m, timeout=3)
