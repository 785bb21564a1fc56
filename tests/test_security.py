"""Attacks on a running cluster, each refused, with the cluster still serving afterwards.

Every inbox authenticates (ZAP) before it reads anything; authenticated peers that send
malformed messages are dropped; the agent serves only object files of its store; the
Serve REST API wants the token and checks Host/Origin; the CLI's files are private and
`raylite stop` only stops raylite's own processes.
"""

from __future__ import annotations

import os
import pickle
import socket
import stat
import subprocess
import sys

import httpx
import pytest
from fixtures import refused_dealer

import raylite
from raylite.core import protocol as P
from raylite.core import runtime
from raylite.core.osutil import free_port_pair
from raylite.testing import serve_auth_headers, wait_for_condition

pytestmark = pytest.mark.timeout(90)


class Evil:
    """Unpickling this runs a shell command that creates a file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _ports(ctx_addr: str) -> dict:
    """Every kind of inbox a cluster has: head (+ its event port), agent, driver, and an
    actor worker's task and core inboxes."""
    core = runtime.core
    info = core.request_head(P.CLUSTER_INFO, {})

    @raylite.remote
    class A:
        def ping(self):
            return 1

    a = A.remote()
    raylite.get(a.ping.remote())
    info = core.request_head(P.CLUSTER_INFO, {})
    actor = next(x for x in info["actors"] if x["state"] == "ALIVE")
    host, port = core.head_addr.rsplit(":", 1)
    return {"head": core.head_addr, "events": f"{host}:{int(port) + 1}",
            "agent": info["nodes"][0]["addr"], "driver": core.addr,
            "worker": actor["addr"], "worker_core": actor["core_addr"], "_keep": a}


def _send_raw(addr: str, frames: list, *, password: bytes | None = None) -> None:
    """Send ``frames`` as a peer without the token would; returns once ``addr`` refused
    the handshake (so it never read them)."""
    with refused_dealer(addr, password=password) as peer:
        peer.send(frames)
        peer.wait_refused()


@raylite.remote
def double(x):
    return 2 * x


def test_unauthenticated_pickles_never_run_on_any_port(tmp_path):
    raylite.init(num_cpus=1)
    try:
        ports = _ports(runtime.core.head_addr)
        for name, addr in ports.items():
            if name.startswith("_"):
                continue
            for password in (None, b"wrong-token"):  # no credentials, wrong ones
                mark = tmp_path / f"pwned-{name}-{password is not None}"
                _send_raw(addr, [b"cluster_info", pickle.dumps(Evil(mark))],
                          password=password)
                _send_raw(addr, [b"x", b"execute", pickle.dumps({"evil": Evil(mark)})],
                          password=password)
        assert not list(tmp_path.glob("pwned-*"))  # every handshake was refused
        assert raylite.get(double.remote(21)) == 42  # and the cluster still serves
    finally:
        raylite.shutdown()


def test_every_cluster_has_a_token_and_a_wrong_one_is_refused():
    raylite.init(num_cpus=1)
    try:
        token = raylite.get_runtime_context().get_cluster_token()
        assert len(token) >= 32
    finally:
        raylite.shutdown()
    from raylite.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        assert c.token and c.token != token
        with pytest.raises(ConnectionError, match="token"):
            raylite.init(address=c.address, _token="not-the-token")
        from raylite.core.transport import MissingTokenError

        with pytest.raises(MissingTokenError, match="token"):
            raylite.init(address=c.address)
        c.connect()
        assert raylite.get(double.remote(2)) == 4
    finally:
        c.shutdown()


def _authed(addr: str):
    """A peer that holds the token (a buggy or hostile cluster member)."""
    return runtime.core.transport.connect(addr)


def test_malformed_messages_from_a_member_are_dropped_and_change_nothing(tmp_path):
    raylite.init(num_cpus=1)
    try:
        core = runtime.core
        before = core.request_head(P.CLUSTER_INFO, {})
        mark = tmp_path / "never"
        garbage = [
            [P.REGISTER_NODE, pickle.dumps("not a node")],
            [P.REGISTER_NODE, pickle.dumps({"node_id": "n", "addr": "tcp://1.2.3.4:1",
                                            "resources": {"CPU": "lots"}})],
            [P.REGISTER_NODE, pickle.dumps({"node_id": 5, "addr": None, "resources": []})],
            [P.REGISTER_WORKER, pickle.dumps({"worker_id": "w"})],
            [P.REQUEST_LEASE, pickle.dumps({"demand": {"CPU": -1}, "reply_to": "x"})],
            [P.TASK_EVENTS, pickle.dumps({"records": [[1, 2]]})],
            [P.HEARTBEAT, pickle.dumps({"node_id": 7})],
            [P.EXECUTE, pickle.dumps({"task_id": b"t"})],  # not a head message
            [b"no_such_type", pickle.dumps({})],
            [P.CLUSTER_INFO, b"\x80\x05not a pickle"],
            [P.CLUSTER_INFO],
            [b""],
        ]
        for target in (core.head_addr, before["nodes"][0]["addr"]):
            sock = _authed(target)
            for frames in garbage:
                sock.send_multipart(frames)
            sock.close(linger=1000)
        # a message that does validate still works: the head answered all along
        wait_for_condition(lambda: core.request_head(P.CLUSTER_INFO, {})["nodes"]
                           is not None)
        after = core.request_head(P.CLUSTER_INFO, {})
        assert [n["node_id"] for n in after["nodes"]] == \
            [n["node_id"] for n in before["nodes"]]
        assert after["nodes"][0]["resources"] == before["nodes"][0]["resources"]
        assert {w["worker_id"] for w in after["workers"]} >= \
            {w["worker_id"] for w in before["workers"]}
        assert raylite.get([double.remote(i) for i in range(5)], timeout=20) == \
            [0, 2, 4, 6, 8]
        assert not mark.exists()
    finally:
        raylite.shutdown()


def test_agent_serves_only_object_files_of_its_store(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("the contents of some private file")
    raylite.init(num_cpus=1)
    try:
        core = runtime.core
        agent = core.request_head(P.CLUSTER_INFO, {})["nodes"][0]["addr"]
        inbox, addr = core.transport.bind()
        out = _authed(agent)
        try:
            store_dir = core.store_dir
            for path in (str(secret), "/etc/passwd",
                         os.path.join(store_dir, "..", "..", "..", "etc", "passwd"),
                         os.path.join(store_dir, "deadbeefdeadbeef.pull")):
                out.send_multipart(P.encode(P.FETCH_CHUNK, {
                    "path": path, "offset": 0, "length": 1 << 20, "dest": "x",
                    "reply_to": addr}))
                assert inbox.poll(10000), "the agent did not answer"
                mtype, body, bufs = P.decode(inbox.recv_multipart())
                assert mtype == P.CHUNK and "not an object" in body["error"] and not bufs
            out.send_multipart(P.encode(P.PULL, {
                "src_path": "/etc/..", "src_addr": agent, "reply_to": addr,
                "req_id": b"r"}))
            assert inbox.poll(10000)
            _, body, _ = P.decode(inbox.recv_multipart())
            assert body["value"] is None and "not an object" in str(body["error"])
        finally:
            out.close(linger=0)
            inbox.close(linger=0)
        # a real object still crosses nodes through the same handlers
        import numpy as np

        ref = raylite.put(np.arange(10))
        assert raylite.get(ref).sum() == 45
    finally:
        raylite.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_rest_api_needs_the_token_and_checks_host_and_origin(tmp_path):
    from raylite import serve

    raylite.init(num_cpus=1)
    try:
        port = _free_port()
        serve.start(http_options={"port": port})

        @serve.deployment(ray_actor_options={"num_cpus": 0})
        def hello(request):
            return "hi"

        serve.run(hello.bind(), name="h", route_prefix="/h", external_scaler_enabled=True)
        base = f"http://127.0.0.1:{port}"
        apps = f"{base}/api/serve/applications/"
        scale = f"{base}/api/v1/applications/h/deployments/hello/scale"
        mark = tmp_path / "pwned"
        exploit = {"applications": [{"name": "x", "route_prefix": "/x",
                                     "import_path": "builtins:exec",
                                     "args": f"open({str(mark)!r}, 'w')"}]}
        auth = serve_auth_headers()
        bad = {"Authorization": "Bearer wrong"}
        for headers in ({}, bad):
            r = httpx.put(apps, json=exploit, headers=headers, timeout=10)
            assert r.status_code == 401 and "token" in r.json()["error"]
            assert r.headers["www-authenticate"] == "Bearer"
            assert httpx.delete(apps, headers=headers, timeout=10).status_code == 401
            assert httpx.post(scale, json={"target_num_replicas": 2}, headers=headers,
                              timeout=10).status_code == 401
        # a web page: DNS rebinding (foreign Host), or a cross-site form (foreign Origin)
        rebound = httpx.get(apps, headers={"Host": f"evil.example:{port}"}, timeout=10)
        assert rebound.status_code == 403 and "Host" in rebound.json()["error"]
        r = httpx.post(scale, json={"target_num_replicas": 2}, timeout=10,
                       headers={**auth, "Origin": "http://evil.example"})
        assert r.status_code == 403 and "Origin" in r.json()["error"]
        assert not mark.exists()
        # still serving, and the token (with a local Origin) is accepted
        assert httpx.get(f"{base}/h", timeout=10).text == "hi"
        assert httpx.get(apps, timeout=10).status_code == 200
        assert httpx.get(apps, headers={"Host": f"localhost:{port}"}).status_code == 200
        r = httpx.post(scale, json={"target_num_replicas": 2}, timeout=10,
                       headers={**auth, "Origin": f"http://127.0.0.1:{port}"})
        assert r.status_code == 200, r.text
        wait_for_condition(lambda: serve.status().applications["h"].deployments["hello"]
                           .running_replicas == 2, timeout=20)
        serve.shutdown()
    finally:
        raylite.shutdown()


def test_private_files_are_0600_from_the_start(tmp_path):
    from raylite.cli import write_private

    old = os.umask(0)  # even with a permissive umask
    try:
        path = tmp_path / "d" / "cluster.json"
        write_private(str(path), {"token": "t"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in path.parent.iterdir() if p.name != "cluster.json"]


def test_cli_files_private_and_stop_spares_foreign_pids(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path))

    def cli(*args):
        out = subprocess.run([sys.executable, "-m", "raylite.cli", *args], env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out

    bystander = subprocess.Popen(["sleep", "60"])
    try:
        # the head listens on the port and the next one: both must be free
        cli("start", "--head", "--port", str(free_port_pair()), "--num-cpus", "1")
        state = tmp_path / "raylite"
        assert stat.S_IMODE((state / "cluster.json").stat().st_mode) == 0o600
        pids = state / "pids"
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in pids.iterdir())
        # a stale record whose pid now belongs to someone else
        (pids / f"{bystander.pid}.json").write_text(
            f'{{"pid": {bystander.pid}, "role": "head", "session": "gone"}}')
        out = cli("stop")
        assert f"skipped pid {bystander.pid}" in out.stderr
        assert bystander.poll() is None  # not killed
    finally:
        bystander.kill()
        bystander.wait()
