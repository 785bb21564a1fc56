"""The autoscaler: the policy as a pure function (bin packing, labels, placement-group
strategies, min/max, idle scale-down, availability scores, at scale), the local provider's
knobs, and the loop on a real cluster of virtual nodes."""

from __future__ import annotations

import os
import threading
import time

import pytest

import raylite
from raylite import autoscaler
from raylite.autoscaler import AutoscalerConfig, LocalNodeProvider, availability_scores, decide
from raylite.testing import wait_for_condition
from raylite.util import state

pytestmark = pytest.mark.timeout(60)

LABEL = autoscaler.NODE_TYPE_LABEL


def types(**spec) -> dict:
    return AutoscalerConfig(node_types=spec).node_types


def tasks(n: int, selector=None, kind: str = "task", **demand) -> list[dict]:
    return [{"kind": kind, "demand": demand, "label_selector": selector,
             "strategy": "DEFAULT"}] * n


def node(node_id: str, node_type: str | None, total: dict, free: dict | None = None,
         idle_s: float = 0.0, status: str = "running", labels: dict | None = None) -> dict:
    lab = dict(labels or {}, **({LABEL: node_type} if node_type else {}))
    return {"node_id": node_id, "node_type": node_type, "resources": total,
            "available": total if free is None else free, "labels": lab, "idle_s": idle_s,
            "status": status, "alive": True, "start_time": 0.0}


def pg(strategy: str, *bundles: dict, selectors=None) -> dict:
    sels = selectors or [None] * len(bundles)
    return {"strategy": strategy, "bundles": [{"resources": b, "label_selector": s}
                                              for b, s in zip(bundles, sels, strict=True)]}


SMALL_BIG = types(small={"resources": {"CPU": 2}}, big={"resources": {"CPU": 8}})
CPU_GPU = types(cpu={"resources": {"CPU": 4}},
                gpu={"resources": {"CPU": 4, "GPU": 1}, "labels": {"acc": "T4"}})


# ----------------------------------------------------------------------------- policy
def test_packs_pending_requests_onto_the_type_they_fill_best():
    d = decide({"requests": tasks(3, CPU=1)}, [], SMALL_BIG)
    assert d.launch_counts() == {"small": 2}
    d = decide({"requests": tasks(6, CPU=4)}, [], SMALL_BIG)
    assert d.launch_counts() == {"big": 3}  # a 4-CPU task fits only the big type
    assert "6 tasks {CPU: 4}" in d.launches[0].reason
    assert all(p["waiting"] == 0 for p in d.pending)


def test_free_capacity_and_launching_nodes_are_used_first():
    nodes = [node("a", None, {"CPU": 4}, {"CPU": 2}),
             node("b", "small", {"CPU": 2}, status="launching")]
    d = decide({"requests": tasks(5, CPU=1)}, nodes, SMALL_BIG)
    assert d.pending[0]["on_free_capacity"] == 4
    assert d.launch_counts() == {"small": 1}
    assert decide({"requests": tasks(4, CPU=1)}, nodes, SMALL_BIG).launches == []


def test_gpu_work_gets_gpu_nodes_and_cpu_work_avoids_them():
    d = decide({"requests": tasks(2, CPU=4, GPU=1) + tasks(4, CPU=1)}, [], CPU_GPU)
    assert d.launch_counts() == {"gpu": 2, "cpu": 1}
    d = decide({"requests": tasks(4, CPU=1)}, [], CPU_GPU)
    assert d.launch_counts() == {"cpu": 1}
    # a GPU node is used for CPU work only when CPU nodes are at their max
    capped = types(cpu={"resources": {"CPU": 4}, "max_workers": 1},
                   gpu={"resources": {"CPU": 4, "GPU": 1}})
    assert decide({"requests": tasks(8, CPU=1)}, [], capped).launch_counts() == \
        {"cpu": 1, "gpu": 1}


def test_label_selectors_pick_the_type_and_unmatched_demand_is_infeasible():
    zones = types(a={"resources": {"CPU": 2}, "labels": {"zone": "a"}},
                  b={"resources": {"CPU": 2}, "labels": {"zone": "b"}},
                  c={"resources": {"CPU": 2}, "labels": {"zone": "c"}})
    assert decide({"requests": tasks(1, {"zone": "b"}, CPU=1)}, [], zones).launch_counts() \
        == {"b": 1}
    assert decide({"requests": tasks(1, {"zone": "!in(a,b)"}, CPU=1)}, [],
                  zones).launch_counts() == {"c": 1}
    assert decide({"requests": tasks(1, {LABEL: "c"}, CPU=1)}, [], zones).launch_counts() \
        == {"c": 1}
    # an existing node with the label takes it; a node without it does not
    nodes = [node("x", None, {"CPU": 2}, labels={"zone": "b"}),
             node("y", None, {"CPU": 2}, labels={"zone": "a"})]
    d = decide({"requests": tasks(3, {"zone": "b"}, CPU=1)}, nodes, zones)
    assert d.pending[0]["on_free_capacity"] == 2 and d.launch_counts() == {"b": 1}
    d = decide({"requests": tasks(2, {"zone": "mars"}, CPU=1) + tasks(1, CPU=64)}, [], zones)
    assert d.launches == []
    assert sorted(r["count"] for r in d.infeasible) == [1, 2]
    assert all("no node type" in r["reason"] for r in d.infeasible)


def test_hard_node_affinity_never_launches():
    req = {"kind": "task", "demand": {"CPU": 1}, "strategy": ["node", "gone", False]}
    d = decide({"requests": [req]}, [], SMALL_BIG)
    assert d.launches == [] and d.infeasible == []
    assert "must run on node gone" in d.pending[0]["reason"]
    soft = dict(req, strategy=["node", "gone", True])
    assert decide({"requests": [soft]}, [], SMALL_BIG).launch_counts() == {"small": 1}


def test_max_workers_per_type_and_for_the_cluster():
    t = types(one={"resources": {"CPU": 1}, "max_workers": 3})
    d = decide({"requests": tasks(10, CPU=1)}, [node("n", "one", {"CPU": 1}, {"CPU": 0})], t)
    assert d.launch_counts() == {"one": 2}
    assert d.pending[0]["waiting"] == 8 and "max_workers" in d.pending[0]["reason"]
    d = decide({"requests": tasks(10, CPU=1)}, [], SMALL_BIG, max_workers=2)
    assert sum(d.launch_counts().values()) == 2
    assert "max_workers=2" in d.pending[0]["reason"]


def test_launch_budget_limits_how_many_start_at_once():
    d = decide({"requests": tasks(20, CPU=2)}, [], SMALL_BIG, launch_budget=3)
    assert sum(d.launch_counts().values()) == 3
    assert "upscaling" in d.pending[0]["reason"]


def test_min_workers_are_kept():
    t = types(base={"resources": {"CPU": 1}, "min_workers": 2, "max_workers": 4})
    d = decide({}, [node("n1", "base", {"CPU": 1})], t)
    assert d.launch_counts() == {"base": 1} and "min_workers=2" in d.launches[0].reason
    # the new min node also takes pending demand
    assert decide({"requests": tasks(1, CPU=1)}, [], t).launch_counts() == {"base": 2}
    idle = [node(f"n{i}", "base", {"CPU": 1}, idle_s=100) for i in range(3)]
    d = decide({}, idle, t, idle_timeout_s=10)
    assert len(d.terminations) == 1 and "idle for 100s" in d.terminations[0].reason


def test_idle_nodes_scale_down_but_not_busy_unmanaged_or_needed_ones():
    nodes = [node("old", "small", {"CPU": 2}, idle_s=30),
             node("fresh", "small", {"CPU": 2}, idle_s=3),
             node("busy", "small", {"CPU": 2}, {"CPU": 0}, idle_s=0),
             node("head", None, {"CPU": 2}, idle_s=999)]
    d = decide({}, nodes, SMALL_BIG, idle_timeout_s=10)
    assert [t.node_id for t in d.terminations] == ["old"]
    # an idle node that pending demand would land on stays
    d = decide({"requests": tasks(1, {"raylite.io/node-id": "old"}, CPU=1)},
               [dict(nodes[0], labels={LABEL: "small", "raylite.io/node-id": "old"})],
               SMALL_BIG, idle_timeout_s=10)
    assert d.terminations == []
    # nodes above a type's max go, idle first
    t = types(small={"resources": {"CPU": 2}, "max_workers": 1})
    d = decide({}, nodes[1:3], t, idle_timeout_s=10)
    assert [x.node_id for x in d.terminations] == ["fresh"]


def test_availability_scores_follow_the_spec():
    assert availability_scores({}) == {}
    s = availability_scores({"a": 50.0, "b": 100.0, "c": 75.0})
    assert s == {"a": 0.5, "b": 0.0, "c": 0.25}


def test_available_types_are_preferred_when_otherwise_equal():
    t = types(spot={"resources": {"CPU": 2}}, ondemand={"resources": {"CPU": 2}},
              reserved={"resources": {"CPU": 2}})
    demand = {"requests": tasks(2, CPU=2)}
    assert decide(demand, [], t).launch_counts() == {"spot": 2}  # config order breaks ties
    d = decide(demand, [], t, failures={"spot": 1000.0})
    assert d.launch_counts() == {"ondemand": 2} and d.scores["spot"] == 0.0
    # both failed: the one that failed longer ago scores higher
    d = decide(demand, [], t, failures={"spot": 1000.0, "ondemand": 2000.0, "reserved": 1500.0})
    assert d.launch_counts() == {"spot": 2}
    assert d.scores == {"spot": 0.5, "ondemand": 0.0, "reserved": 0.25}
    # a cleared type (no failure recorded) is back to 1
    assert decide(demand, [], t, failures={"ondemand": 5.0}).launch_counts() == {"spot": 2}
    # availability never beats a better fit: only the big type holds a 4-CPU task
    d = decide({"requests": tasks(1, CPU=4)}, [], SMALL_BIG, failures={"big": 1.0})
    assert d.launch_counts() == {"big": 1}


def test_placement_group_strategies():
    four = types(four={"resources": {"CPU": 4}}, eight={"resources": {"CPU": 8}})
    one = lambda s: {"placement_groups": [pg(s, {"CPU": 1}, {"CPU": 1}, {"CPU": 1})]}  # noqa: E731
    assert decide(one("STRICT_SPREAD"), [], four).launch_counts() == {"four": 3}
    assert decide(one("PACK"), [], four).launch_counts() == {"four": 1}
    assert decide(one("SPREAD"), [], four).launch_counts() == {"four": 1}
    # STRICT_PACK: all bundles on one node, so only a type that holds them all
    d = decide({"placement_groups": [pg("STRICT_PACK", {"CPU": 3}, {"CPU": 3})]}, [], four)
    assert d.launch_counts() == {"eight": 1} and "STRICT_PACK group" in d.launches[0].reason
    # STRICT_SPREAD uses distinct existing nodes before launching
    nodes = [node("x", "four", {"CPU": 4}), node("y", None, {"CPU": 1}, {"CPU": 0})]
    d = decide(one("STRICT_SPREAD"), nodes, four)
    assert d.launch_counts() == {"four": 2}
    # bundle label selectors
    zoned = types(a={"resources": {"CPU": 2}, "labels": {"zone": "a"}},
                  b={"resources": {"CPU": 2}, "labels": {"zone": "b"}})
    d = decide({"placement_groups": [pg("PACK", {"CPU": 1}, {"CPU": 1},
                                        selectors=[{"zone": "b"}, {"zone": "b"}])]}, [], zoned)
    assert d.launch_counts() == {"b": 1}
    d = decide({"placement_groups": [pg("STRICT_PACK", {"CPU": 1}, {"CPU": 1},
                                        selectors=[{"zone": "a"}, {"zone": "b"}])]}, [], zoned)
    assert d.launches == [] and len(d.infeasible) == 1


def test_new_strict_spread_nodes_take_other_demand_too():
    four = types(four={"resources": {"CPU": 4}})
    d = decide({"placement_groups": [pg("STRICT_SPREAD", {"CPU": 1}, {"CPU": 1})],
                "requests": tasks(6, CPU=1)}, [], four)
    assert d.launch_counts() == {"four": 2}  # 2 bundles + 6 tasks fill two 4-CPU nodes


def test_resource_requests_count_against_total_capacity():
    busy = [node("n", "small", {"CPU": 2}, {"CPU": 0}, idle_s=0)]
    d = decide({}, busy, SMALL_BIG, resource_requests=[{"CPU": 2}, {"CPU": 2}])
    assert d.launch_counts() == {"small": 1} and "request_resources" in d.launches[0].reason
    idle = [node("n", "small", {"CPU": 2}, idle_s=100)]
    assert decide({}, idle, SMALL_BIG, idle_timeout_s=1,
                  resource_requests=[{"CPU": 2}]).terminations == []
    assert len(decide({}, idle, SMALL_BIG, idle_timeout_s=1).terminations) == 1


def test_decision_at_scale_10000_requests_over_1000_nodes():
    t = types(cpu={"resources": {"CPU": 4}, "labels": {"zone": "a"}, "max_workers": 5000},
              gpu={"resources": {"CPU": 4, "GPU": 4}, "labels": {"zone": "a"},
                   "max_workers": 500},
              zb={"resources": {"CPU": 4}, "labels": {"zone": "b"}, "max_workers": 5000})
    nodes = [node(f"n{i}", "cpu", {"CPU": 4}, {"CPU": 1.0}, labels={"zone": "a"})
             for i in range(900)]
    nodes += [node(f"b{i}", "zb", {"CPU": 4}, {"CPU": 2.0}, labels={"zone": "b"})
              for i in range(100)]
    reqs = tasks(8000, {"zone": "a"}, CPU=1) + tasks(1500, {"zone": "b"}, CPU=1) + \
        tasks(400, kind="actor", GPU=1) + tasks(100, {"zone": "mars"}, CPU=1)
    t0 = time.perf_counter()
    d = decide({"requests": reqs}, nodes, t)
    took = time.perf_counter() - t0
    by = {(p["label_selector"].get("zone"), p["demand"].get("GPU", 0)): p for p in d.pending}
    # zone a: 900 free CPUs; 400 GPU actors -> 100 GPU nodes that also take 400 CPU tasks;
    # the other 6700 tasks -> 1675 CPU nodes. zone b: 200 free, 1300 -> 325 nodes.
    assert by["a", 0]["on_free_capacity"] == 900 and by["a", 0]["waiting"] == 0
    assert d.launch_counts() == {"gpu": 100, "cpu": 1675, "zb": 325}
    assert by["b", 0]["on_free_capacity"] == 200 and by["b", 0]["waiting"] == 0
    assert by[None, 1.0]["on_new_nodes"] == 400
    assert [r["count"] for r in d.infeasible] == [100]
    assert took < 5.0  # generous: correctness is the point here; see benchmarks/scheduling.py


# ----------------------------------------------------------------------------- provider
class FakeCluster:
    """Records add_node calls instead of starting processes."""

    session = "fake"

    def __init__(self):
        self.agents: dict = {}
        self.added: list = []

    def add_node(self, **kw):
        self.added.append(kw)

    def node_process(self, node_id):
        return self.agents.get(node_id)

    def stop_node(self, node_id):
        return self.agents.get(node_id)

    def forget_node(self, node_id, proc=None):
        self.agents.pop(node_id, None)


def test_local_provider_knobs_change_launches_at_run_time():
    t = types(spot={"resources": {"CPU": 2, "GPU": 1, "disk": 3}, "labels": {"k": "v"}})
    spot = t["spot"]
    fake = FakeCluster()
    p = LocalNodeProvider(fake)
    (nid,) = p.launch(spot, 1)
    assert p.launch_status(nid)[0] == "started" and nid.startswith("spot-")
    assert fake.added[0] == {"num_cpus": 2.0, "num_gpus": 1.0, "resources": {"disk": 3.0},
                             "labels": {"k": "v", LABEL: "spot"}, "node_id": nid, "warm": 1}
    p.set_failing("spot")
    (bad,) = p.launch(spot, 1)
    assert p.launch_status(bad) == ("failed", "launching spot failed (simulated)")
    p.set_failing("spot", False)
    p.set_unavailable("spot")
    (never,) = p.launch(spot, 1)
    assert p.launch_status(never)[0] == "pending" and len(fake.added) == 1
    p.set_unavailable("spot", False)
    p.set_launch_delay(0.2, "spot")
    (slow,) = p.launch(spot, 1)
    assert p.launch_status(slow)[0] == "pending"
    wait_for_condition(lambda: p.launch_status(slow)[0] == "started", 5)
    (cancelled,) = p.launch(spot, 1)
    p.terminate(cancelled)
    assert p.launch_status(cancelled)[0] == "terminated"
    assert set(p.non_terminated_nodes()) == {nid, never, slow}
    (late,) = p.launch(spot, 1)
    p.shutdown()  # cancels launches not started yet
    assert p._nodes[late]["timer"].finished.is_set()
    p._start(fake, late)  # even a timer that fired already starts nothing now
    assert len(fake.added) == 2 and p.launch_status(late)[0] == "pending"


# ----------------------------------------------------------------------------- the loop
@pytest.fixture
def autoscaled():
    """init(num_cpus=0) (the driver's node runs nothing) with an autoscaler of the given
    node types, ticking fast; always shut down."""
    def start(node_types: dict, **kw):
        cfg = {"node_types": node_types, "interval_s": 0.1, "idle_timeout_s": 60,
               "launch_timeout_s": 15, **kw}
        raylite.init(num_cpus=0, autoscaler=cfg)
        return autoscaler.get()
    try:
        yield start
    finally:
        raylite.shutdown()


@raylite.remote
def where() -> str:
    return raylite.get_runtime_context().get_node_id()


def alive() -> int:
    return sum(n["Alive"] for n in raylite.nodes())


def _type_of(node_id: str) -> str:
    (n,) = [n for n in state.list_nodes() if n["node_id"] == node_id]
    return n["node_type"]


def test_pending_tasks_launch_the_right_types_then_idle_nodes_go(autoscaled):
    scaler = autoscaled({"cpu": {"resources": {"CPU": 1}, "max_workers": 2},
                         "gpu": {"resources": {"CPU": 1, "GPU": 1},
                                 "labels": {"acc": "T4"}, "max_workers": 1}},
                        idle_timeout_s=1.0)
    events = state.subscribe(["autoscaler"])
    try:
        gpu_node = raylite.get(where.options(num_gpus=1).remote(), timeout=30)
        cpu_node = raylite.get(where.options(label_selector={"acc": "!T4"}).remote(),
                               timeout=30)
        assert _type_of(gpu_node) == "gpu" and _type_of(cpu_node) == "cpu"
        report = events.get(timeout=10)[1]
        assert set(report) == {"status", "decisions"}
    finally:
        events.close()
    launches = [e for e in scaler.history if e["action"] == "launch"]
    assert {e["node_type"] for e in launches} == {"cpu", "gpu"}
    assert any("task" in e["reason"] and "GPU: 1" in e["reason"] for e in launches)
    status = state.get_autoscaler_status()
    assert status["node_types"]["gpu"]["labels"] == {"acc": "T4"}
    assert status["node_types"]["gpu"]["launches"] == 1
    # both go once idle past the timeout; the driver's own node stays
    wait_for_condition(lambda: alive() == 1 and all(
        t["running"] == 0 for t in state.get_autoscaler_status()["node_types"].values()),
        20, message="idle nodes terminated")
    terms = [e for e in scaler.history if e["action"] == "terminate"]
    assert len(terms) == 2 and all("idle for" in e["reason"] for e in terms)


def test_actors_and_placement_groups_trigger_launches(autoscaled):
    autoscaled({"zone-a": {"resources": {"CPU": 1}, "labels": {"zone": "a"}},
                "zone-b": {"resources": {"CPU": 1}, "labels": {"zone": "b"}}})

    @raylite.remote(num_cpus=1, label_selector={"zone": "b"})
    class Where:
        def node(self):
            return raylite.get_runtime_context().get_node_id()

    a = Where.remote()
    assert _type_of(raylite.get(a.node.remote(), timeout=30)) == "zone-b"
    group = raylite.util.placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD",
                                         bundle_label_selector=[{"zone": "a"}] * 2)
    assert group.wait(30)
    info = raylite.util.placement_group_table(group)
    nodes = list(info["bundles_to_node_id"].values())
    assert len(set(nodes)) == 2 and {_type_of(n) for n in nodes} == {"zone-a"}


def test_unavailable_type_falls_back_is_recorded_and_cleared(autoscaled, tmp_path):
    scaler = autoscaled({"spot": {"resources": {"CPU": 1}, "max_workers": 2},
                         "ondemand": {"resources": {"CPU": 1}, "max_workers": 1}},
                        launch_timeout_s=1.0)
    scaler.provider.set_unavailable("spot")
    flag = str(tmp_path / "go")

    @raylite.remote
    def hold(path, started=None):  # keeps its CPU (a task blocked in get() would lend it)
        if started:
            open(started, "w").close()
        while not os.path.exists(path):
            time.sleep(0.02)
        return raylite.get_runtime_context().get_node_id()

    first = hold.remote(flag)
    wait_for_condition(lambda: state.get_autoscaler_status()["node_types"]["ondemand"]
                       ["running"] == 1, 20, message="fell back to ondemand")
    status = state.get_autoscaler_status()
    assert status["node_types"]["spot"]["availability"] == 0.0
    assert status["node_types"]["spot"]["last_failure"] is not None
    assert "spot" in status["unavailable"]
    failed = [e for e in status["decisions"] if e["action"] == "launch_failed"]
    assert failed and "launch timeout" in failed[0]["reason"]
    # spot comes back: with ondemand at its max, spot is launched, runs, and is cleared
    scaler.provider.set_unavailable("spot", False)
    started = tmp_path / "second-started"
    second = hold.remote(flag, str(started))
    wait_for_condition(lambda: state.get_autoscaler_status()["node_types"]["spot"]
                       ["running"] == 1, 20, message="spot launched again")
    # it may first be queued behind `first` on the busy node (lease pipelining); the
    # idle spot node steals it from there: it starts while `first` still holds its CPU
    wait_for_condition(started.exists, 20, message="second started on the new node")
    open(flag, "w").close()
    assert [_type_of(n) for n in raylite.get([first, second], timeout=30)] == \
        ["ondemand", "spot"]
    status = state.get_autoscaler_status()
    assert status["unavailable"] == {} and status["node_types"]["spot"]["availability"] == 1
    assert any("available again" in e["reason"] for e in status["decisions"])


def test_failing_type_is_recorded_at_once_and_another_type_used(autoscaled):
    scaler = autoscaled({"broken": {"resources": {"CPU": 1}},
                         "fine": {"resources": {"CPU": 1}}})
    scaler.provider.set_failing("broken")
    assert _type_of(raylite.get(where.remote(), timeout=30)) == "fine"
    assert scaler.failures.keys() == {"broken"}
    assert "failed (simulated)" in next(e["reason"] for e in scaler.history
                                       if e["action"] == "launch_failed")


def test_min_workers_request_resources_and_shutdown_leave_nothing_behind(autoscaled):
    scaler = autoscaled({"base": {"resources": {"CPU": 1}, "min_workers": 1,
                                  "max_workers": 3}}, idle_timeout_s=0.5)
    wait_for_condition(lambda: alive() == 2, 20, message="min_workers node")
    autoscaler.request_resources(bundles=[{"CPU": 1}] * 3)
    wait_for_condition(lambda: alive() == 4, 20, message="requested capacity")
    wait_for_condition(lambda: all((n["idle_s"] or 0) > 1.0 for n in
                                   state.get_autoscaler_status()["nodes"]), 10)
    ticks = scaler.ticks  # two more ticks with every node idle past the timeout
    wait_for_condition(lambda: scaler.ticks >= ticks + 2, 5)
    assert alive() == 4
    autoscaler.request_resources()
    wait_for_condition(lambda: alive() == 2, 20, message="back to min_workers")
    scaler.provider.set_launch_delay(30)
    autoscaler.request_resources(num_cpus=3)
    wait_for_condition(lambda: any(n["status"] == "launching" for n in
                                   state.get_autoscaler_status()["nodes"]), 10)
    thread = scaler._thread
    raylite.shutdown()  # the loop stops, delayed launches are cancelled, nothing leaks
    assert not thread.is_alive() and autoscaler.get() is None
    assert all(r["timer"] is None or r["timer"].finished.is_set()
               for r in scaler.provider._nodes.values())
    assert not [t for t in threading.enumerate() if t.name == "raylite-autoscaler"]
