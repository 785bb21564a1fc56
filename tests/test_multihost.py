"""Two hosts for real: a head in one network namespace, a node in another, joined by a
veth pair, each on its own address (traffic between them is CURVE-encrypted).

Needs root and iproute2 (`.ci/run` installs it; CI runs as root). The namespaces, the
veth pair and every process are removed afterwards.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from raylite.testing import wait_for_condition

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("RAYLITE_REQUIRE_NETNS"),
                       reason="network namespaces need root (CI runs as root)"),
]

NET = "10.231.{}.{}"


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=60)


@pytest.fixture
def two_hosts(tmp_path):
    """Namespaces A (10.231.N.1) and B (10.231.N.2), with their own state dirs."""
    if shutil.which("ip") is None:
        pytest.fail("iproute2's `ip` is missing (.ci/run installs it)")
    n = os.getpid() % 250 + 1
    a, b = f"rlA{os.getpid()}", f"rlB{os.getpid()}"
    va, vb = f"rla{os.getpid() % 100000}", f"rlb{os.getpid() % 100000}"
    hosts = {"a": {"ns": a, "ip": NET.format(n, 1), "tmp": tmp_path / "a"},
             "b": {"ns": b, "ip": NET.format(n, 2), "tmp": tmp_path / "b"}}
    try:
        for h in hosts.values():
            _sh("ip", "netns", "add", h["ns"])
            _sh("ip", "-n", h["ns"], "link", "set", "lo", "up")
            h["tmp"].mkdir()
        _sh("ip", "link", "add", va, "netns", a, "type", "veth", "peer", "name", vb,
            "netns", b)
        for h, dev in ((hosts["a"], va), (hosts["b"], vb)):
            _sh("ip", "-n", h["ns"], "addr", "add", f"{h['ip']}/24", "dev", dev)
            _sh("ip", "-n", h["ns"], "link", "set", dev, "up")
        # the network itself works before raylite is asked to
        ip = hosts["b"]["ip"]
        probe = (f"import socket\ntry:\n    socket.create_connection(({ip!r}, 9), 5)\n"
                 "except ConnectionRefusedError:\n    print('reachable')")
        assert "reachable" in _sh("ip", "netns", "exec", a, sys.executable, "-c",
                                  probe).stdout
        yield hosts
    finally:
        for h in hosts.values():
            if h["tmp"].exists():
                _in(h, "stop", check=False)
            pids = _sh("ip", "netns", "pids", h["ns"], check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
            _sh("ip", "netns", "del", h["ns"], check=False)  # the veth pair goes with it
        wait_for_condition(lambda: not any(h["ns"] in _sh("ip", "netns", "list").stdout
                                           for h in hosts.values()), timeout=10)


def _env(host: dict) -> dict:
    env = dict(os.environ, TMPDIR=str(host["tmp"]))
    env.pop("RAYLITE_TOKEN", None)
    return env


def _in(host: dict, *cli: str, check: bool = True) -> subprocess.CompletedProcess:
    """`raylite ...` on that host."""
    out = subprocess.run(["ip", "netns", "exec", host["ns"], sys.executable, "-m",
                          "raylite.cli", *cli], env=_env(host), capture_output=True,
                         text=True, timeout=60)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


DRIVER = r"""
import json, os, sys, time
import numpy as np
import raylite
from raylite.testing import wait_for_condition
from raylite.util.placement_group import placement_group, remove_placement_group
from raylite.util.scheduling_strategies import PlacementGroupSchedulingStrategy

address, token, me = sys.argv[1:4]
raylite.init(address=address, _token=token, _node_ip_address=me)
nodes = {n["Labels"]["side"]: n["NodeID"] for n in raylite.nodes() if n["Alive"]}

@raylite.remote
def where():
    return raylite.get_runtime_context().get_node_id()

@raylite.remote
def checksum_and_make(arr, n):
    # reads an object made on the other host; makes one there for the way back
    return float(arr.sum()), raylite.get_runtime_context().get_node_id(), \
        np.full(n, 3, dtype=np.uint8)

@raylite.remote
class Side:
    def info(self):
        return raylite.get_runtime_context().get_node_id(), os.getpid()

def on(side):
    return {"label_selector": {"side": side}}

out = {"nodes": nodes}
out["tasks"] = {s: raylite.get(where.options(**on(s)).remote(), timeout=30) for s in "ab"}
actors = {s: Side.options(**on(s)).remote() for s in "ab"}
out["actors"] = {s: raylite.get(a.info.remote(), timeout=30)[0] for s, a in actors.items()}
n = 64 << 20
arr = np.full(n, 1, dtype=np.uint8)             # made here (host a)
total, ran_on, back = raylite.get(checksum_and_make.options(**on("b")).remote(arr, n),
                                  timeout=60)
out["a_to_b"] = [total, ran_on]
out["b_to_a"] = [int(back.sum()), back.nbytes]  # made on b, read here
pg = placement_group([{"CPU": 0.5}, {"CPU": 0.5}], strategy="STRICT_SPREAD")
assert pg.wait(30)
out["pg"] = sorted(raylite.get([where.options(num_cpus=0.5,
    scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i)).remote() for i in (0, 1)],
    timeout=30))
remove_placement_group(pg)
print("RESULT1", json.dumps(out), flush=True)
assert sys.stdin.readline().strip() == "killed"
b = nodes["b"]
wait_for_condition(lambda: not next(n for n in raylite.nodes() if n["NodeID"] == b)["Alive"],
                   timeout=30)
print("DEAD", flush=True)
assert sys.stdin.readline().strip() == "rejoined"
def new_b():
    return [n["NodeID"] for n in raylite.nodes() if n["Alive"] and n["Labels"]["side"] == "b"]
wait_for_condition(lambda: new_b(), timeout=30)
nb = new_b()[0]
total, ran_on, back = raylite.get(checksum_and_make.options(**on("b")).remote(arr, n),
                                  timeout=60)
print("RESULT2", json.dumps({"new_b": nb, "old_b": b, "ran_on": ran_on, "total": total,
                              "back": int(back.sum())}), flush=True)
raylite.shutdown()
"""


def test_head_and_node_on_two_hosts(two_hosts, tmp_path):
    a, b = two_hosts["a"], two_hosts["b"]
    port = "46379"
    out = _in(a, "start", "--head", "--port", port, "--node-ip-address", a["ip"],
              "--num-cpus", "1", "--labels", "side=a").stdout
    head = f"{a['ip']}:{port}"
    assert head in out
    join = re.search(r"To add a node:\s+(.*)", out).group(1)
    assert "--node-ip-address NODE_IP" in join  # the printed join command carries it
    token = re.search(r"--token ([0-9a-f]+)", join).group(1)
    _in(b, "start", "--address", head, "--token", token, "--node-ip-address", b["ip"],
        "--num-cpus", "1", "--labels", "side=b")
    status = _in(a, "status").stdout
    assert status.count(" alive ") == 2, status
    # the node's agent listens on its own address, not on loopback
    ss = _sh("ip", "netns", "exec", b["ns"], "ss", "-ltnp", check=False).stdout
    assert b["ip"] in ss and "127.0.0.1" not in ss.replace(b["ip"], ""), ss

    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    drv = subprocess.Popen(["ip", "netns", "exec", a["ns"], sys.executable, str(script),
                            head, token, a["ip"]], env=_env(a), stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    try:
        line = drv.stdout.readline()
        assert line.startswith("RESULT1"), line
        r = json.loads(line.split(" ", 1)[1])
        nodes = r["nodes"]
        assert set(nodes) == {"a", "b"} and nodes["a"] != nodes["b"]
        assert r["tasks"] == nodes and r["actors"] == nodes
        assert r["a_to_b"] == [float(64 << 20), nodes["b"]]
        assert r["b_to_a"] == [3 * (64 << 20), 64 << 20]
        assert r["pg"] == sorted(nodes.values())
        # the node's host goes away (its agent and workers killed), then joins again
        pids = list((b["tmp"] / "raylite" / "pids").iterdir())
        assert len(pids) == 1
        os.kill(json.loads(pids[0].read_text())["pid"], 9)
        drv.stdin.write("killed\n")
        drv.stdin.flush()
        assert drv.stdout.readline().strip() == "DEAD"
        _in(b, "start", "--address", head, "--token", token, "--node-ip-address", b["ip"],
            "--num-cpus", "1", "--labels", "side=b")
        drv.stdin.write("rejoined\n")
        drv.stdin.flush()
        line = drv.stdout.readline()
        assert line.startswith("RESULT2"), line
        r2 = json.loads(line.split(" ", 1)[1])
        assert r2["new_b"] != r2["old_b"] and r2["ran_on"] == r2["new_b"]
        assert r2["total"] == float(64 << 20) and r2["back"] == 3 * (64 << 20)
        assert drv.wait(30) == 0
    finally:
        drv.kill()
        drv.wait()


def test_curve_encrypts_off_loopback_traffic(two_hosts, tmp_path):
    """A recording TCP relay between a driver and the head: the token and the names the
    driver sends never appear in what crosses the wire."""
    a, b = two_hosts["a"], two_hosts["b"]
    port = "46479"
    out = _in(a, "start", "--head", "--port", port, "--node-ip-address", a["ip"],
              "--num-cpus", "1").stdout
    token = re.search(r"--token ([0-9a-f]+)", out).group(1)
    relay = tmp_path / "relay.py"
    capture = tmp_path / "wire.bin"
    relay.write_text(RELAY)
    # the relay listens on host b on the head's two ports, and forwards to host a
    rel = subprocess.Popen(["ip", "netns", "exec", b["ns"], sys.executable, str(relay),
                            b["ip"], a["ip"], port, str(capture)], stdout=subprocess.PIPE,
                           text=True)
    try:
        assert rel.stdout.readline().strip() == "LISTENING"
        name = "a-very-recognisable-actor-name-0123456789"
        code = (f"import raylite\n"
                f"raylite.init(address='{b['ip']}:{port}', _token='{token}', "
                f"_node_ip_address='{b['ip']}')\n"
                f"try:\n    raylite.get_actor('{name}')\nexcept ValueError as e:\n"
                f"    print('LOOKED UP', '{name}' in str(e))\n"
                "raylite.shutdown()\n")
        done = subprocess.run(["ip", "netns", "exec", b["ns"], sys.executable, "-c", code],
                              env=_env(b), capture_output=True, text=True, timeout=60)
        assert "LOOKED UP True" in done.stdout, done.stdout + done.stderr
    finally:
        rel.kill()
        rel.wait()
    wire = capture.read_bytes()
    assert len(wire) > 200  # the driver's traffic to the head went through the relay
    assert token.encode() not in wire and name.encode() not in wire
    assert b"register_driver" not in wire and b"get_actor_info" not in wire


RELAY = r"""
import socket, sys, threading
listen, target, port, capture = sys.argv[1:5]
lock = threading.Lock()
out = open(capture, "ab")

def pipe(src, dst, record):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if record:
                with lock:
                    out.write(data)
                    out.flush()
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

def serve(p):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((listen, p))
    srv.listen()
    while True:
        c, _ = srv.accept()
        u = socket.create_connection((target, p))
        threading.Thread(target=pipe, args=(c, u, True), daemon=True).start()
        threading.Thread(target=pipe, args=(u, c, True), daemon=True).start()

for p in (int(port), int(port) + 1):
    threading.Thread(target=serve, args=(p,), daemon=True).start()
print("LISTENING", flush=True)
threading.Event().wait()
"""
