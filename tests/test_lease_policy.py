"""The owner's lease policy (raylite.core.lease_policy) on its own: no cluster."""

from __future__ import annotations

import pytest

from raylite.core import lease_policy as policy
from raylite.core.head_leases import LeasesPart
from raylite.core.head_state import StatePart
from raylite.core.lease_policy import Lease
from raylite.core.task_spec import Task

pytestmark = pytest.mark.timeout(10)

NOW = 1000.0


def lease(n_inflight: int = 0, sent: float = NOW, **flags) -> Lease:
    le = Lease({"worker_id": f"w{id(flags)}", "addr": "tcp://127.0.0.1:1",
                "core_addr": "tcp://127.0.0.1:2", "node_id": "n1"}, key=("k",))
    for i in range(n_inflight):
        t = Task()
        t.task_id, t.sent = bytes([i]), sent
        le.inflight[t.task_id] = t
    for name, value in flags.items():
        setattr(le, name, value)
    return le


def test_an_idle_worker_comes_first():
    busy, idle = lease(1), lease(0)
    assert policy.pick_lease([busy, idle], pipeline=True, now=NOW) is idle


def test_no_usable_lease():
    assert policy.pick_lease([], pipeline=True, now=NOW) is None
    unusable = [lease(blocked=True), lease(stealing=True), lease(exiting=True),
                lease(policy.PIPELINE_DEPTH)]
    assert policy.pick_lease(unusable, pipeline=True, now=NOW) is None


def test_pipelining_only_behind_a_young_task_of_a_short_shape():
    one, two = lease(1), lease(2)
    assert policy.pick_lease([two, one], pipeline=True, now=NOW) is one  # least busy
    assert policy.pick_lease([one], pipeline=False, now=NOW) is None
    old = NOW + policy.PIPELINE_MAX_AGE_S * 2
    assert policy.pick_lease([one], pipeline=True, now=old) is None


def test_which_shapes_pipeline():
    assert policy.may_pipeline(policy.PIPELINE_MAX_TASK_S / 2, spread=False, max_calls=None)
    assert not policy.may_pipeline(policy.UNKNOWN_TASK_S, spread=False, max_calls=None)
    assert not policy.may_pipeline(0.0, spread=True, max_calls=None)
    assert not policy.may_pipeline(0.0, spread=False, max_calls=3)


def test_backlog_and_lease_requests():
    leases = [lease(0), lease(1), lease(3)]
    assert policy.backlog(5, leases) == 5 + 0 + 2  # queued, and pipelined behind others
    assert policy.backlog(0, []) == 0
    assert policy.lease_requests_wanted(3) == 3
    assert policy.lease_requests_wanted(100) == policy.MAX_LEASE_REQUESTS


def test_idle_leases_go_back_and_slow_ones_are_stolen_from():
    idle = lease(0)
    idle.idle_since = NOW
    assert policy.idle_action(idle, NOW + policy.LEASE_IDLE_S / 2) is None
    assert policy.idle_action(idle, NOW + policy.LEASE_IDLE_S * 2) == "return"
    queued = lease(2, sent=NOW)
    assert policy.idle_action(queued, NOW + policy.STEAL_AFTER_S / 2) is None
    assert policy.idle_action(queued, NOW + policy.STEAL_AFTER_S * 2) == "steal"
    assert policy.idle_action(lease(1, sent=NOW), NOW + 60) is None  # nothing behind it
    exiting = lease(0, exiting=True)
    exiting.idle_since = NOW
    assert policy.idle_action(exiting, NOW + 60) is None  # its WORKER_DIED removes it


def test_moving_average():
    assert policy.moving_average(None, 0.5) == 0.5
    assert policy.moving_average(1.0, 0.0) == pytest.approx(0.8)


class _Demand(LeasesPart, StatePart):
    """The head's lease and state parts alone: pending requests and owners' backlogs."""

    def __init__(self):
        self.pending, self.backlogs = [], {}


def test_a_placed_request_is_not_counted_again_in_its_owners_backlog():
    head = _Demand()
    base = {"reply_to": "tcp://127.0.0.1:1", "owner": "tcp://127.0.0.1:1",
            "demand": {"CPU": 1}}
    head.on_request_lease(dict(base, req_id="r1", backlog=1, outstanding=[]))
    head.on_request_lease(dict(base, req_id="r2", backlog=2, outstanding=["r1"]))
    assert sum(d["count"] for d in head.demand_requests()) == 2
    head.pending = [r for r in head.pending if r.req_id != "r1"]  # r1 placed on a node
    # the owner counted its queue before r1's grant came: both tasks still queued there
    head.on_lease_backlog({"req_id": "r1", "backlog": 2, "outstanding": ["r1", "r2"]})
    assert sum(d["count"] for d in head.demand_requests()) == 1
    # a longer queue is still seen as the demand it is
    head.on_lease_backlog({"req_id": "r2", "backlog": 5, "outstanding": ["r2"]})
    assert sum(d["count"] for d in head.demand_requests()) == 5
    head.pending = []
    assert head.demand_requests() == [] and head.backlogs == {}
