"""Helpers for tests of raylite and of code built on it (shipped in the package, like
dask's ``utils_test``): await conditions instead of sleeping, find leftovers."""

from __future__ import annotations

import os
import sys
import threading
import time

import psutil

from raylite.core import store


def wait_for_condition(predicate, timeout: float = 10.0, interval: float = 0.02,
                       message: str = "") -> None:
    """Poll ``predicate`` until it returns true; raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as e:  # the condition may not be checkable yet
            last_exc = e
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s: {message or predicate}"
                       + (f" (last error: {last_exc!r})" if last_exc else ""))


def blocked_in_get(thread: threading.Thread | None = None) -> bool:
    """Whether ``thread`` (default: the main thread) is waiting inside ``raylite.get``
    or ``raylite.wait`` right now, so a test can interrupt a get that really blocks
    (``wait_for_condition(blocked_in_get)``) instead of guessing with a sleep."""
    ident = (thread or threading.main_thread()).ident
    frame = sys._current_frames().get(ident)
    if frame is None or frame.f_code.co_name != "wait":  # not waiting on a lock now
        return False
    api = os.path.join("raylite", "core", "api.py")
    while frame is not None:
        if frame.f_code.co_name in ("get", "wait") and frame.f_code.co_filename.endswith(api):
            return True
        frame = frame.f_back
    return False


ROOT_ENV = "RAYLITE_ROOT_PID"


def mark_root() -> None:
    """Tag this process as the root of what a test run starts: every raylite process
    started below it inherits the tag, so leak checks ignore other people's clusters."""
    os.environ.setdefault(ROOT_ENV, str(os.getpid()))


def raylite_processes() -> list[psutil.Process]:
    """raylite runtime processes (head, agents, workers) started under this root."""
    root = os.environ.get(ROOT_ENV)
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info.get("cmdline") or [])
        if "raylite.core." not in cmd or p.pid == os.getpid():
            continue
        try:
            if root is not None and p.environ().get(ROOT_ENV) != root:
                continue
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
        found.append(p)
    return found


def shm_leftovers() -> list[str]:
    """Session directories of object stores left in /dev/shm or the fallback root."""
    prefix = f"raylite_{os.environ[ROOT_ENV]}-" if ROOT_ENV in os.environ else "raylite_"
    found = []
    for root in {store.SHM_ROOT, store.store_root()}:
        if os.path.isdir(root):
            found += [os.path.join(root, n) for n in os.listdir(root) if n.startswith(prefix)]
    return found


def assert_no_leaks(timeout: float = 5.0) -> None:
    """Wait for raylite processes and /dev/shm segments to go; fail naming what stays."""
    try:
        wait_for_condition(lambda: not raylite_processes() and not shm_leftovers(), timeout)
    except TimeoutError:
        procs = [(p.pid, " ".join(p.cmdline())) for p in raylite_processes()]
        for p in raylite_processes():
            p.kill()
        raise AssertionError(f"leaked processes {procs} / shm {shm_leftovers()}") from None


class SignalActor:
    """Ray's test helper, as a plain class: ``wait`` blocks until ``send`` is called.
    Use it as ``Signal = raylite.remote(num_cpus=0)(SignalActor)``."""

    def __init__(self):
        import asyncio

        self.event = asyncio.Event()

    async def send(self):
        self.event.set()

    async def wait(self):
        await self.event.wait()


class CounterActor:
    """A counter to count calls or attempts across processes (make it an actor with
    ``raylite.remote(num_cpus=0)(CounterActor)``)."""

    def __init__(self):
        self.n = 0

    def incr(self):
        self.n += 1
        return self.n

    def get(self):
        return self.n


def serve_auth_headers() -> dict:
    """The header Serve's REST API wants on requests that change something: the
    connected cluster's token as a bearer token (a raylite extension)."""
    import raylite

    return {"Authorization": f"Bearer {raylite.get_runtime_context().get_cluster_token()}"}
