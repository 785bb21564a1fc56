"""Multi-node clusters: the CLI, cluster_utils, node failure, token authentication."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import time

import pytest
from fixtures import refused_dealer

import raylite
from raylite.cluster_utils import Cluster
from raylite.testing import assert_no_leaks, wait_for_condition

pytestmark = pytest.mark.timeout(60)


def _cli(tmp_path, *args) -> str:
    env = dict(os.environ, TMPDIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "raylite.cli", *args], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def cli(tmp_path):
    def run(*args):
        return _cli(tmp_path, *args)
    yield run
    _cli(tmp_path, "stop")


def _free_port() -> int:
    from raylite.core.osutil import free_port_pair

    return free_port_pair()


def test_cli_head_and_second_node_run_tasks_on_both(cli):
    port = _free_port()
    out = cli("start", "--head", "--port", str(port), "--num-cpus", "1", "--labels", "zone=a")
    assert f"127.0.0.1:{port}" in out
    token = re.search(r"--token ([0-9a-f]+)", out).group(1)  # loopback heads have one too
    cli("start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1", "--labels", "zone=b")
    wait_for_condition(lambda: cli("status").count("alive") == 2)
    raylite.init(address=f"127.0.0.1:{port}", _token=token)
    try:
        @raylite.remote
        def where():
            return raylite.get_runtime_context().get_node_id()

        by_zone = {z: raylite.get(where.options(label_selector={"zone": z}).remote())
                   for z in ("a", "b")}
        assert by_zone["a"] != by_zone["b"]
        assert {n["NodeID"] for n in raylite.nodes()} == set(by_zone.values())
        @raylite.remote
        def busy_where():
            time.sleep(0.2)  # long enough that the two tasks overlap
            return raylite.get_runtime_context().get_node_id()

        spread = raylite.get([busy_where.options(scheduling_strategy="SPREAD").remote()
                              for _ in range(2)])
        assert set(spread) == set(by_zone.values())
    finally:
        raylite.shutdown()


def test_cli_head_on_a_taken_port_says_so_at_once(tmp_path):
    """A head that cannot bind exits at once; `raylite start` reports the head's own
    error (from head.log) instead of waiting 20 s for an answer that cannot come and
    then saying "no answer from the raylite head"."""
    import socket

    port = _free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port + 1))
        taken.listen()
        out = subprocess.run([sys.executable, "-m", "raylite.cli", "start", "--head",
                              "--port", str(port), "--num-cpus", "1"],
                             env=dict(os.environ, TMPDIR=str(tmp_path)),
                             capture_output=True, text=True, timeout=30)
    assert out.returncode == 1, out.stdout
    assert f"could not start on 127.0.0.1:{port}" in out.stderr
    assert "Address already in use" in out.stderr, out.stderr
    assert "no answer" not in out.stderr
    assert "Traceback" not in out.stderr


def test_cluster_utils_add_remove_nodes():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        node = cluster.add_node(num_cpus=1, resources={"special": 1})
        cluster.connect()
        assert len([n for n in raylite.nodes() if n["Alive"]]) == 2

        @raylite.remote(resources={"special": 1})
        def on_special():
            return raylite.get_runtime_context().get_node_id()

        assert raylite.get(on_special.remote()) == node.node_id
        cluster.remove_node(node)
        cluster.wait_for_nodes()
        wait_for_condition(lambda: len([n for n in raylite.nodes() if n["Alive"]]) == 1)
    finally:
        cluster.shutdown()


def test_node_agent_killed_tasks_retried_elsewhere(tmp_path):
    from raylite.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        doomed = cluster.add_node(num_cpus=1)
        cluster.connect()
        marker = tmp_path / "started"

        @raylite.remote(max_retries=2)
        def work(path):
            node = raylite.get_runtime_context().get_node_id()
            with open(path, "a") as f:
                f.write(node + "\n")
            if node == doomed_id:
                time.sleep(60)
            return node

        doomed_id = doomed.node_id
        ref = work.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            doomed.node_id, soft=True)).remote(str(marker))
        wait_for_condition(lambda: marker.exists() and doomed_id in marker.read_text())
        cluster.remove_node(doomed)
        survivor = raylite.get(ref, timeout=30)
        assert survivor != doomed_id
        assert not raylite.nodes()[[n["NodeID"] for n in raylite.nodes()].index(doomed_id)][
            "Alive"]
    finally:
        cluster.shutdown()


def test_token_required_off_loopback(cli, tmp_path):
    port = _free_port()
    out = cli("start", "--head", "--port", str(port), "--num-cpus", "1",
              "--node-ip-address", "0.0.0.0")
    token = re.search(r"--token ([0-9a-f]+)", out).group(1)
    pwned = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {pwned}",))

    with refused_dealer(f"tcp://127.0.0.1:{port}") as peer:
        peer.send([b"cluster_info", pickle.dumps(Evil())])
        peer.wait_refused()
        log_path = tmp_path / "raylite" / "logs" / "head.log"
        wait_for_condition(lambda: log_path.exists() and "refused" in log_path.read_text())
    assert not pwned.exists()
    with pytest.raises(ConnectionError, match="token"):
        raylite.init(address=f"127.0.0.1:{port}", _token="not-the-token")
    raylite.init(address=f"127.0.0.1:{port}", _token=token)
    try:
        assert raylite.get(raylite.put("ok")) == "ok"

        @raylite.remote
        def f():
            return 7

        assert raylite.get(f.remote()) == 7
    finally:
        raylite.shutdown()


DRIVER = """
import os, sys, numpy as np, raylite
raylite.init(nodes=[{"num_cpus": 1}, {"num_cpus": 1}])
ref = raylite.put(np.ones(10**6))
@raylite.remote
class A:
    def pid(self): return os.getpid()
a = A.remote()
raylite.get(a.pid.remote())
print("READY", flush=True)
import time; time.sleep(60)
"""


def test_driver_killed_everything_exits_and_shm_freed():
    proc = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "READY"
        from raylite.testing import raylite_processes, shm_leftovers

        assert raylite_processes() and shm_leftovers()
        proc.kill()
        proc.wait()
        t0 = time.monotonic()
        assert_no_leaks(timeout=10)
        assert time.monotonic() - t0 < 10
    finally:
        proc.kill()


INTERRUPT = """
import threading, time, raylite
from raylite.testing import blocked_in_get, wait_for_condition
raylite.init(num_cpus=2)
@raylite.remote
def slow(): time.sleep(30)
@raylite.remote
def quick(): return 5
def tell_when_blocked():
    wait_for_condition(blocked_in_get, timeout=20)
    print("BLOCKED", flush=True)
threading.Thread(target=tell_when_blocked, daemon=True).start()
ref = slow.remote()
try:
    raylite.get(ref)
except KeyboardInterrupt:
    print("INTERRUPTED", "pending" if not raylite.wait([ref], timeout=0)[0] else "done",
          flush=True)
print("AFTER", raylite.get(quick.remote(), timeout=20), flush=True)
raylite.shutdown()
"""


def test_ctrl_c_interrupts_get_and_cluster_stays_usable():
    import signal

    proc = subprocess.Popen([sys.executable, "-c", INTERRUPT], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "BLOCKED"  # the interrupt hits a waiting get
        proc.send_signal(signal.SIGINT)
        assert proc.stdout.readline().split() == ["INTERRUPTED", "pending"]
        assert proc.stdout.readline().strip() == "AFTER 5"
        assert proc.wait(20) == 0
    finally:
        proc.kill()
