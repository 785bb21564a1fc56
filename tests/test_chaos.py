"""Chaos: random SIGKILLs of workers and of one node agent while 10,000 tasks and 200
actor calls run. Every result is the right value or a documented error (the task's
retries used up, the actor's restarts used up, its node lost); nothing hangs; nothing is
left behind."""

from __future__ import annotations

import os
import random
import signal
import threading

import pytest

import raylite
from raylite import exceptions as exc
from raylite.cluster_utils import Cluster
from raylite.testing import assert_no_leaks
from raylite.util import state

pytestmark = pytest.mark.timeout(300)

# what a caller may see instead of a value when the process running its work is killed
DOCUMENTED = (exc.WorkerCrashedError, exc.NodeDiedError, exc.ObjectLostError,
              exc.RayActorError)


@raylite.remote(max_retries=3)
def double(i):
    return 2 * i


@raylite.remote(max_restarts=5, max_task_retries=3)
class Counter:
    def add(self, x):
        return x + 1


def test_random_kills_during_10000_tasks_and_200_actor_calls():
    rng = random.Random(7)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    stop = threading.Event()
    kills = {"workers": 0, "agent": 0}
    try:
        doomed = c.add_node(num_cpus=1)
        c.connect()
        me = os.getpid()

        def chaos():
            agent_killed = False
            while not stop.wait(rng.uniform(0.05, 0.15)):
                try:
                    workers = [w for w in state.list_workers()
                               if w.get("state") in ("leased", "actor") and w.get("pid")]
                except Exception:
                    continue
                if workers:
                    victim = rng.choice(workers)
                    try:
                        os.kill(victim["pid"], signal.SIGKILL)
                        kills["workers"] += 1
                    except ProcessLookupError:
                        pass
                if not agent_killed and kills["workers"] >= 10:
                    c.remove_node(doomed)  # SIGKILL of a node agent (and its workers)
                    kills["agent"] += 1
                    agent_killed = True
                if kills["workers"] >= 30:
                    return

        counters = [Counter.remote() for _ in range(2)]
        raylite.get([a.add.remote(0) for a in counters], timeout=60)
        t = threading.Thread(target=chaos, daemon=True)
        t.start()
        refs = [double.remote(i) for i in range(10_000)]
        calls = [counters[i % 2].add.remote(i) for i in range(200)]
        ok = errors = 0
        for i, r in enumerate(refs):
            try:
                assert raylite.get(r, timeout=120) == 2 * i
                ok += 1
            except DOCUMENTED:
                errors += 1
        for i, r in enumerate(calls):
            try:
                assert raylite.get(r, timeout=120) == i + 1
                ok += 1
            except DOCUMENTED:
                errors += 1
        stop.set()
        t.join(10)
        assert kills["workers"] > 0 and kills["agent"] == 1
        assert ok + errors == 10_200
        assert ok > 9_000, (ok, errors, kills)  # retries absorb almost every kill
        # the survivors still work
        assert raylite.get(double.remote(21), timeout=60) == 42
        assert me == os.getpid()
    finally:
        stop.set()
        c.shutdown()
    assert_no_leaks(timeout=20)
