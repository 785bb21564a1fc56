"""A real local Ray cluster for the Ray-backend tests of this directory: started once
(``ray start --head`` on 127.0.0.1 with 2 CPUs, a custom resource and labels, in a
temporary directory of its own), joined once by ``raylite.init(backend="ray")``, and
stopped when the directory's tests are done, with every process it started.

The fixtures the shared tests ask for (``shared_cluster``, ``cluster``) are the one Ray
connection here, so a test written for raylite's own runtime runs unchanged on Ray.
Tests are skipped when Ray is not installed (``pip install 'raylite[ray]'``), unless
``RAYLITE_REQUIRE_RAY=1`` (CI), where that fails them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

import raylite

RAY_CPUS = 2
RAY_RESOURCES = {"custom": 4}
RAY_LABELS = {"zone": "a", "pool": "train"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_bin() -> str:
    path = Path(sys.executable).with_name("ray")
    return str(path) if path.exists() else "ray"


def _cluster_processes(temp_dir: str) -> list[psutil.Process]:
    """The processes of the cluster in ``temp_dir`` (they name it on their command
    line) and their children (the workers)."""
    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in a for a in p.info["cmdline"] or ()):
                found[p.pid] = p
                for c in p.children(recursive=True):
                    found[c.pid] = c
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def stop_ray_cluster(temp_dir: str) -> None:
    """Stop only this cluster's processes (``ray stop`` would stop every Ray cluster of
    the machine): terminate, wait, kill."""
    procs = _cluster_processes(temp_dir)
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture(scope="package")
def ray_cluster():
    """``ray start --head`` in a fresh temp dir; yields its address and stops it."""
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("RAYLITE_REQUIRE_RAY") == "1":
            pytest.fail("Ray is required here (RAYLITE_REQUIRE_RAY=1): "
                        "pip install 'raylite[ray]'")
        pytest.skip("Ray is not installed: pip install 'raylite[ray]'")
    temp_dir = tempfile.mkdtemp(prefix="rl-ray-", dir="/tmp")
    port = _free_port()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAYLITE_BACKEND", None)
    cmd = [_ray_bin(), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
           f"--num-cpus={RAY_CPUS}", f"--resources={json.dumps(RAY_RESOURCES)}",
           "--labels=" + ",".join(f"{k}={v}" for k, v in RAY_LABELS.items()),
           f"--temp-dir={temp_dir}", "--include-dashboard=false",
           f"--dashboard-agent-listen-port={_free_port()}",
           f"--ray-client-server-port={_free_port()}", "--disable-usage-stats"]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        if out.returncode != 0:
            raise RuntimeError(f"ray start failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        address = Path(temp_dir, "ray_current_cluster").read_text().strip()
        yield {"address": address, "temp_dir": temp_dir}
    finally:
        stop_ray_cluster(temp_dir)
        left = _cluster_processes(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"Ray processes left: {[p.pid for p in left]}"


@pytest.fixture(scope="package")
def ray_connection(ray_cluster):
    """raylite on the Ray backend, connected to :func:`ray_cluster` for all the tests."""
    ctx = raylite.init(backend="ray", address=ray_cluster["address"],
                       _temp_dir=ray_cluster["temp_dir"])
    try:
        yield ctx
    finally:
        raylite.shutdown()


@pytest.fixture
def shared_cluster(ray_connection):
    """The Ray connection, under the name the shared tests ask for."""
    return ray_connection


@pytest.fixture
def cluster(ray_connection):
    """The Ray connection (one for all tests here: a Ray cluster takes ~40 s to start on
    a small machine); the shared tests that ask for a fresh cluster only kill actors."""
    return ray_connection


@pytest.fixture(scope="module")
def serve_url(ray_connection):
    """Serve on the Ray connection, its proxy on a free port, for a whole module; yields
    the proxy's base URL (the fixture of the same name in ``tests/conftest.py``, on Ray)."""
    from raylite import serve

    port = _free_port()
    serve.start(http_options={"port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
