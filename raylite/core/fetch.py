"""``wait(fetch_local=True)``: an object counts as ready once it is computed *and* its
value can be read on this node without a transfer (as Ray's: the wait pulls objects that
live in other nodes' stores, so the ``get`` after it does not wait for the copy).

On one node every object is local the moment it is computed, so ``wait`` first waits as
``fetch_local=False`` does and returns at once when enough of what is computed is local.
Only otherwise does it start pulls (a few at a time, on a small thread pool) of what is
computed elsewhere, and count each ref when its copy is here; refs computed later are
pulled as they become ready. A pull that fails (the source node died) counts as ready:
the ``get`` that follows raises the error, it does not hang.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

PULL_THREADS = 4
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _pull_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(PULL_THREADS, thread_name_prefix="raylite-fetch")
        return _pool


def _is_local(core, desc) -> bool:
    """Whether a value descriptor can be read here without a transfer."""
    if desc[0] != "s" or desc[1] == core.node_id:
        return True  # inline values and errors travel with the descriptor
    return os.path.exists(os.path.join(core.store_dir, os.path.basename(desc[2])))


def _ready_in_order(refs, ready_ids: set, num_returns: int) -> tuple[list, list]:
    ready, not_ready = [], []
    for r in refs:
        (ready if r.id in ready_ids and len(ready) < num_returns else not_ready).append(r)
    return ready, not_ready


def wait_local(core, refs: list, num_returns: int, timeout: float | None):
    """``(ready, not_ready)``: ready = computed and readable on this node."""
    deadline = None if timeout is None else time.monotonic() + timeout
    core.wait(refs, num_returns, timeout)
    computed = core.ready_descs(refs)
    local = {oid for oid, desc in computed.items() if _is_local(core, desc)}
    out_of_time = deadline is not None and time.monotonic() >= deadline
    if len(local) >= num_returns or (out_of_time and len(computed) == len(local)):
        return _ready_in_order(refs, local, num_returns)
    return _LocalWait(core, refs, num_returns, local).run(deadline)


class _LocalWait:
    """The slow path: pull what is computed elsewhere, hear of what is computed later."""

    def __init__(self, core, refs: list, num_returns: int, local: set):
        self.core = core
        self.refs = refs
        self.num_returns = num_returns
        self.local = set(local)
        self.pulling: set = set()
        self.cond = threading.Condition()
        self.done = False

    def run(self, deadline: float | None):
        core = self.core
        unwatch = core.watch([r for r in self.refs if r.id not in self.local], self.arrived)
        hook = core.blocked_hook
        if hook is not None:
            hook(True)  # a task waiting here lends its CPU, as in get
        try:
            with self.cond:
                while len(self.local) < self.num_returns:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self.cond.wait(left)
                self.done = True
                ready_ids = set(self.local)
        finally:
            if hook is not None:
                hook(False)
            unwatch()
        return _ready_in_order(self.refs, ready_ids, self.num_returns)

    def arrived(self, oid: bytes, desc) -> None:
        """A ref is computed (core lock held, maybe on the IO thread: no waiting here)."""
        if self.done or oid in self.pulling:
            return
        if _is_local(self.core, desc):
            self.mark(oid)
            return
        self.pulling.add(oid)
        _pull_pool().submit(self.pull, oid, desc)

    def pull(self, oid: bytes, desc) -> None:
        """Copy one object here. It goes on after the wait has returned (as Ray's
        fetches do): the next wait or get finds the copy."""
        try:
            self.core.local_copy(desc[1], desc[2])
        except Exception:  # lost: the get after the wait raises it
            pass
        self.mark(oid)

    def mark(self, oid: bytes) -> None:
        with self.cond:
            self.local.add(oid)
            self.cond.notify_all()
