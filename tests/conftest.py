"""Shared fixtures: clusters that always stop, and a leak check around every test."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

import raylite
from raylite.testing import assert_no_leaks, mark_root

mark_root()
# Test clusters preload nothing (a test that wants it asks): the suite imports torch, so
# by default every cluster's nodes would import torch again, seconds of CPU each.
os.environ.setdefault("RAYLITE_PRELOAD", "")
# The LLM engine's compiled CPU kernel is built into this run's own directory (not the
# user's ~/.cache), removed when the run ends.
_KERNEL_DIR = tempfile.mkdtemp(prefix="raylite-test-kernels-")
os.environ.setdefault("RAYLITE_KERNEL_DIR", _KERNEL_DIR)


def pytest_unconfigure(config):
    shutil.rmtree(_KERNEL_DIR, ignore_errors=True)


# Fixtures of a wider scope than one test (shared_cluster, serve_url, a module's own)
# that started the cluster now up: it legitimately outlives the tests between.
_cluster_fixtures: set[str] = set()


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    was_up = raylite.is_initialized()
    yield
    if fixturedef.scope != "function" and not was_up and raylite.is_initialized():
        _cluster_fixtures.add(fixturedef.argname)


def pytest_fixture_post_finalizer(fixturedef, request):
    _cluster_fixtures.discard(fixturedef.argname)


@pytest.fixture(autouse=True)
def _no_leaks(request):
    """After each test: no raylite process or /dev/shm segment is left, and raylite is
    not left initialised -- unless a module-scoped fixture keeps its cluster up (it is
    checked when it stops). A test that leaves a cluster up fails, and the cluster is
    stopped so the tests after it start clean."""
    yield
    if _cluster_fixtures:
        return
    if raylite.is_initialized():
        raylite.shutdown()
        assert_no_leaks()
        pytest.fail("the test left raylite initialised: call raylite.shutdown() (or use "
                    "the cluster fixture)", pytrace=False)
    assert_no_leaks()


@pytest.fixture(scope="module")
def shared_cluster():
    """One 2-CPU local cluster for a whole test module (tests that do not break it)."""
    ctx = raylite.init(num_cpus=2)
    try:
        yield ctx
    finally:
        raylite.shutdown()
        assert_no_leaks()


@pytest.fixture
def cluster():
    """A fresh 2-CPU local cluster for one test (for tests that kill things)."""
    ctx = raylite.init(num_cpus=2)
    try:
        yield ctx
    finally:
        raylite.shutdown()


@pytest.fixture
def two_nodes():
    """A fresh cluster of two virtual nodes with different labels."""
    ctx = raylite.init(nodes=[{"num_cpus": 1, "labels": {"zone": "a"}},
                              {"num_cpus": 1, "labels": {"zone": "b"}}])
    try:
        yield ctx
    finally:
        raylite.shutdown()


@pytest.fixture(scope="module")
def serve_url():
    """A 2-CPU cluster running Serve on a free port, for a whole test module; yields the
    HTTP proxy's base URL."""
    import socket

    from raylite import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    raylite.init(num_cpus=2)
    try:
        serve.start(http_options={"port": port})
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        raylite.shutdown()
        assert_no_leaks()
