"""Preloading (``init(preload=...)``, ``RAYLITE_PRELOAD``): a node imports modules once,
in a second zygote, and forks its workers from there. The pool forked before is replaced
while idle, busy workers keep running, and the processes that fork stay single-threaded
(no torch thread pool starts in them)."""

from __future__ import annotations

import os

import psutil
import pytest

import raylite
from raylite.core.driver import LocalCluster
from raylite.core.zygote import PRELOAD_ENV, preload_modules
from raylite.testing import wait_for_condition

# the preloader imports torch at the lowest CPU priority: on a busy machine it takes a while
pytestmark = pytest.mark.timeout(240)


def _probe():
    import sys

    dynamo = "torch._dynamo" in sys.modules  # before anything here imports it
    torch = sys.modules.get("torch")
    return {"pid": os.getpid(), "dynamo": dynamo, "nice": os.getpriority(os.PRIO_PROCESS, 0),
            "threads": torch.get_num_threads() if torch else None}


@raylite.remote(num_cpus=0)
class Pid:
    def pid(self):
        return os.getpid()

    def probe(self):
        return _probe()


def _probe_new_actor() -> dict:
    """_probe in a new actor: its worker comes from the idle pool (a driver that keeps
    submitting tasks keeps the worker it leased, forked before the preload or not)."""
    actor = Pid.remote()
    try:
        return raylite.get(actor.probe.remote())
    finally:
        raylite.kill(actor)


def _forkers() -> tuple[psutil.Process, list[psutil.Process]]:
    """The node's zygote and the preloaders among its children (those that fork)."""
    agent = next(p for p in psutil.Process().children()
                 if "raylite.core.agent" in " ".join(p.cmdline()))
    (zygote,) = agent.children()
    return zygote, [c for c in zygote.children() if c.children()]


def test_workers_are_forked_with_torch_imported():
    pytest.importorskip("torch")
    raylite.init(num_cpus=2, preload=["torch"])
    try:
        actor = Pid.remote()  # on a worker of the first pool, forked before the preload
        pid = raylite.get(actor.pid.remote())
        wait_for_condition(lambda: _probe_new_actor()["dynamo"], timeout=180, interval=0.5,
                           message="an actor ran in a worker with torch._dynamo imported")
        assert raylite.get(actor.pid.remote()) == pid  # a busy worker is not replaced
        # torch read OMP_NUM_THREADS in the zygote: a worker's own value still applies
        r = raylite.get(raylite.remote(_probe).options(
            runtime_env={"env_vars": {"OMP_NUM_THREADS": "3"}}).remote())
        assert r["dynamo"] and r["threads"] == 3
        # the preloader imported at the lowest priority; its workers run at the usual one
        assert r["nice"] == os.getpriority(os.PRIO_PROCESS, 0)
        zygote, preloaders = _forkers()
        assert len(preloaders) == 1
        assert zygote.num_threads() == 1 and preloaders[0].num_threads() == 1
    finally:
        raylite.shutdown()


def test_a_module_that_does_not_import_leaves_the_zygote_serving(capfd):
    raylite.init(num_cpus=1, preload=["raylite_no_such_module"])
    try:
        err = []
        wait_for_condition(lambda: err.append(capfd.readouterr().err) or
                           "not preloading" in "".join(err), timeout=30)
        actors = [Pid.remote() for _ in range(3)]  # more than the pool: forked now
        assert len(set(raylite.get([a.pid.remote() for a in actors]))) == 3
        _, preloaders = _forkers()
        assert preloaders == []
    finally:
        raylite.shutdown()


def test_what_is_preloaded(monkeypatch):
    assert preload_modules("torch") == ["torch", "torch.distributed", "torch._dynamo"]
    assert preload_modules(" json, json ,") == ["json"] and preload_modules(None) == []
    import torch  # noqa: F401  (a driver that uses torch preloads it by default)

    cluster = LocalCluster("preload-test")  # starts no process
    monkeypatch.delenv(PRELOAD_ENV, raising=False)
    assert cluster._env()[PRELOAD_ENV] == "torch"
    monkeypatch.setenv(PRELOAD_ENV, "")  # set, even empty: it wins
    assert cluster._env()[PRELOAD_ENV] == ""
    cluster.preload = "json"  # init(preload=["json"])
    assert cluster._env()[PRELOAD_ENV] == "json"
    with pytest.raises(ValueError, match="preload"):
        raylite.init(address="127.0.0.1:1", preload=["torch"])
