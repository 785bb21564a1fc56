"""Shared fixtures: clusters that always stop, and a leak check around every test."""

from __future__ import annotations

import pytest

import raylite
from raylite.testing import assert_no_leaks, mark_root

mark_root()


@pytest.fixture(autouse=True)
def _no_leaks(request):
    yield
    if raylite.is_initialized() or "shared_cluster" in request.fixturenames:
        return  # a module-scoped cluster is still up; it is checked when it stops
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
