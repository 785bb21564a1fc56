"""The state API, the timeline and the event stream, on real clusters."""

from __future__ import annotations

import json
import queue

import numpy as np
import pytest

import raylite
from raylite.cluster_utils import Cluster
from raylite.testing import SignalActor, wait_for_condition
from raylite.util import placement_group, placement_group_table, remove_placement_group
from raylite.util import state as st

pytestmark = pytest.mark.timeout(60)


@raylite.remote
def square(x):
    return x * x


@raylite.remote(max_retries=0)
def boom():
    raise KeyError("nope")


@raylite.remote
class Counter:
    def __init__(self):
        self.n = 0

    def incr(self):
        self.n += 1
        return self.n


def _next(events, want, timeout=15.0):
    """The first event for which ``want(topic, body)`` holds."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        topic, body = events.get(timeout=max(0.01, deadline - time.monotonic()))
        if want(topic, body):
            return topic, body


def test_list_nodes_records_and_dataframe(two_nodes):
    nodes = st.list_nodes()
    assert len(nodes) == 2 and {n["state"] for n in nodes} == {"ALIVE"}
    assert {n["labels"]["zone"] for n in nodes} == {"a", "b"}
    assert all(n["resources_total"]["CPU"] == 1 for n in nodes)
    df = nodes.to_df()
    assert list(df["node_id"]) == [n["node_id"] for n in nodes]
    assert "store_used" in df.columns and "idle_s" in df.columns
    assert "<table" in nodes._repr_html_()
    only_a = st.list_nodes(filters=[("node_id", "=", nodes[0]["node_id"])], as_df=True)
    assert len(only_a) == 1
    with pytest.raises(ValueError, match="Cannot filter nodes on 'colour'"):
        st.list_nodes(filters=[("colour", "=", "red")])
    with pytest.raises(ValueError, match="'=' or '!='"):
        st.list_nodes(filters=[("state", ">", "x")])


def test_tasks_actors_workers_objects(cluster):
    assert raylite.get([square.remote(i) for i in range(5)]) == [0, 1, 4, 9, 16]
    with pytest.raises(raylite.exceptions.RayTaskError):
        raylite.get(boom.remote())
    c = Counter.remote()
    assert raylite.get(c.incr.remote()) == 1

    tasks = st.list_tasks()
    done = [t for t in tasks if t["name"] == "square"]
    assert len(done) == 5 and {t["state"] for t in done} == {"FINISHED"}
    assert all(t["start"] <= t["end"] and t["node_id"] and t["worker_id"] for t in done)
    failed = st.list_tasks(filters=[("state", "=", "FAILED")])
    assert len(failed) == 1 and "KeyError" in failed[0]["error"]
    calls = st.list_tasks(filters=[("type", "=", "ACTOR_TASK")])
    assert [t["name"] for t in calls] == ["incr"]
    assert st.summarize_tasks()["square"] == {"FINISHED": 5}

    actors = st.list_actors(filters=[("state", "=", "ALIVE")])
    assert [a["class_name"] for a in actors] == ["Counter"]
    workers = st.list_workers()
    assert any(w["actor_id"] == actors[0]["actor_id"] for w in workers)
    raylite.kill(c)
    wait_for_condition(lambda: st.list_actors()[0]["state"] == "DEAD")

    big = raylite.put(np.zeros(1 << 20, dtype=np.uint8))
    small = raylite.put("hi")
    objs = {o["object_id"]: o for o in st.list_objects()}
    assert objs[big.hex()]["location"] == "SHARED_MEMORY"
    assert objs[big.hex()]["size"] >= 1 << 20
    assert objs[small.hex()]["location"] == "INLINE"
    assert objs[big.hex()]["ref_count"] == 1


def test_running_task_shows_running(cluster):
    signal = raylite.remote(num_cpus=0)(SignalActor).remote()

    @raylite.remote
    def waits(s):
        raylite.get(s.wait.remote())
        return 1

    ref = waits.remote(signal)
    wait_for_condition(lambda: any(t["name"].endswith("waits") and t["state"] == "RUNNING"
                                   for t in st.list_tasks()))
    raylite.get(signal.send.remote())
    assert raylite.get(ref) == 1
    wait_for_condition(lambda: any(t["name"].endswith("waits") and t["state"] == "FINISHED"
                                   for t in st.list_tasks()))


def test_timeline_dataframe_and_chrome_trace(cluster, tmp_path):
    raylite.get([square.remote(i) for i in range(6)])
    path = tmp_path / "trace.json"
    df = raylite.timeline(str(path))
    rows = df[df["name"] == "square"]
    assert len(rows) == 6
    assert (rows["duration"] >= 0).all() and rows["start"].is_monotonic_increasing
    trace = json.loads(path.read_text())
    ours = [e for e in trace if e["name"] == "square"]
    assert len(ours) == 6 and all(e["ph"] == "X" and e["dur"] >= 0 for e in ours)
    assert all(e["pid"].startswith("node ") and e["tid"].startswith("worker ") for e in ours)


def test_event_stream_tasks_actors_and_groups(cluster):
    with st.subscribe(["task", "actor", "placement_group"]) as events:
        raylite.get(square.remote(3))
        _, body = _next(events, lambda t, b: t == "task" and any(
            e["name"] == "square" and e["state"] == "FINISHED" for e in b["events"]))
        c = Counter.remote()
        _next(events, lambda t, b: t == "actor" and b["state"] == "ALIVE"
              and b["class_name"] == "Counter")
        raylite.kill(c)
        _next(events, lambda t, b: t == "actor" and b["state"] == "DEAD")
        pg = placement_group([{"CPU": 1}])
        _next(events, lambda t, b: t == "placement_group" and b["state"] == "CREATED")
        remove_placement_group(pg)
        _next(events, lambda t, b: t == "placement_group" and b["state"] == "REMOVED")
    with pytest.raises(ValueError, match="Unknown event topics"):
        st.subscribe(["tasks"])


def test_callback_stream_and_pending_event(cluster):
    seen = queue.Queue()
    stream = st.subscribe(["pending"], callback=lambda topic, body: seen.put((topic, body)))
    try:
        ref = square.options(num_cpus=64).remote(2)
        topic, body = seen.get(timeout=15)
        assert topic == "pending" and body["demand"] == {"CPU": 64.0} and body["infeasible"]
        raylite.cancel(ref)
    finally:
        stream.close()
    assert st.get_autoscaler_status() is None


def test_node_events_and_group_removed_with_its_creator():
    """Nodes joining and leaving are events; a non-detached group goes away with the
    driver that made it."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    try:
        cluster.connect()
        pg = placement_group([{"CPU": 2}])
        assert pg.wait(20)
        with st.subscribe(["node"]) as events:
            node = cluster.add_node(num_cpus=1, labels={"zone": "z"})
            _, body = _next(events, lambda t, b: b["alive"])
            assert body["node_id"] == node.node_id and body["info"]["labels"]["zone"] == "z"
            cluster.remove_node(node)
            _, body = _next(events, lambda t, b: not b["alive"])
            assert body["node_id"] == node.node_id
        raylite.shutdown()
        cluster._connected = False
        cluster.connect()
        wait_for_condition(lambda: placement_group_table()[pg.id.hex()]["state"] == "REMOVED")
        wait_for_condition(lambda: raylite.available_resources().get("CPU") == 2)
    finally:
        cluster.shutdown()


def test_memory_resource_and_accelerator_label(monkeypatch):
    monkeypatch.setenv("RAYLITE_ACCELERATOR_TYPE", "T4")
    raylite.init(nodes=[{"num_cpus": 1, "num_gpus": 1, "memory": 10**9},
                        {"num_cpus": 1, "num_gpus": 0}])
    try:
        nodes = {n["resources_total"].get("GPU", 0): n for n in st.list_nodes()}
        assert nodes[1]["labels"]["raylite.io/accelerator-type"] == "T4"
        assert "raylite.io/accelerator-type" not in nodes[0]["labels"]
        assert nodes[1]["resources_total"]["memory"] == 10**9

        @raylite.remote
        def here():
            return raylite.get_runtime_context().get_node_id()

        gpu_node = nodes[1]["node_id"]
        assert raylite.get(here.options(accelerator_type="T4").remote(), timeout=20) == gpu_node
        by_label = here.options(label_selector={"raylite.io/accelerator-type": "T4"})
        assert raylite.get(by_label.remote(), timeout=20) == gpu_node
        assert raylite.get(here.options(memory=5 * 10**8, num_gpus=1).remote(),
                           timeout=20) == gpu_node
        too_big = here.options(memory=2 * 10**9, num_gpus=1).remote()
        ready, _ = raylite.wait([too_big], timeout=0.5)
        assert ready == []
        raylite.cancel(too_big)
    finally:
        raylite.shutdown()


def test_cancelled_pending_task_leaves_the_demand(cluster):
    ref = square.options(label_selector={"zone": "mars"}).remote(2)
    wait_for_condition(lambda: st.get_state("demand")["demand"]["requests"])
    raylite.cancel(ref)
    with pytest.raises(raylite.exceptions.TaskCancelledError):
        raylite.get(ref, timeout=10)
    wait_for_condition(lambda: not st.get_state("demand")["demand"]["requests"])
    rec = next(t for t in st.list_tasks() if t["task_id"] == ref.task_id())
    assert rec["state"] == "FAILED" and "TaskCancelledError" in rec["error"]


def test_demand_counts_the_whole_queue(cluster):
    """The owner asks for a few leases at a time but reports its queue: the autoscaler
    sees all 30 waiting tasks, not just the requests in flight."""
    refs = [square.options(resources={"slot": 1}).remote(i) for i in range(30)]
    wait_for_condition(lambda: sum(r["count"] for r in st.get_state("demand")["demand"]
                                   ["requests"]) == 30)
    from raylite.autoscaler.packing import group_demand

    shapes, _ = group_demand(st.get_state("demand")["demand"])
    assert [s.count for s in shapes] == [30]
    for r in refs:
        raylite.cancel(r)
