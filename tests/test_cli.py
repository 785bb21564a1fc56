"""``raylite start --head`` when its own check of the new head fails (commit 3c17344):
the head and agent it started, and their store, must not outlive the failed command."""

from __future__ import annotations

import os
import signal

import psutil
import pytest

from raylite import cli
from raylite.core import driver, store
from raylite.core.osutil import free_port_pair
from raylite.testing import wait_for_condition

pytestmark = pytest.mark.timeout(90)


def _session_processes(session: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if session in (p.info.get("cmdline") or []):
            found.append(p)
    return found


def test_start_head_stops_what_it_started_when_the_head_does_not_answer(
        tmp_path, monkeypatch, capsys):
    """The head really does not answer: it is SIGSTOPped once its node's store exists,
    just before the CLI's check (a shorter timeout than the CLI's 20 s, nothing else
    changed) sends its request, so the check times out as it would against a hung head."""
    monkeypatch.setattr(driver, "LOG_DIR", str(tmp_path / "logs"))  # detached processes' logs
    started: list[driver.LocalCluster] = []

    class Recorded(driver.LocalCluster):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    real_query = cli.query_head

    def check_against_stopped_head(address, msg_type, *args, **kwargs):
        cluster = started[0]
        wait_for_condition(lambda: os.path.isdir(store.session_dir(cluster.session)),
                           timeout=30, message="the agent made its store")
        os.kill(cluster.head.pid, signal.SIGSTOP)
        return real_query(address, msg_type, *args, **dict(kwargs, timeout=2))

    monkeypatch.setattr(cli, "LocalCluster", Recorded)
    monkeypatch.setattr(cli, "query_head", check_against_stopped_head)
    port = free_port_pair()
    try:
        assert cli.main(["start", "--head", "--port", str(port), "--num-cpus", "1"]) == 1
        assert "no answer from the raylite head" in capsys.readouterr().err
        session = started[0].session
        assert _session_processes(session) == [], "the head or agent outlived the failure"
        assert not os.path.exists(store.session_dir(session)), "its store was left"
    finally:  # whatever the outcome: nothing of that session stays
        for cluster in started:
            for p in _session_processes(cluster.session):
                try:
                    p.send_signal(signal.SIGCONT)
                    p.kill()
                    p.wait(5)
                except psutil.NoSuchProcess:
                    pass
            store.remove_dir(store.session_dir(cluster.session))
            store.remove_dir(store.spill_root(cluster.session))
