"""raylite.widgets: pure renderers on hand-made state, live views on a real cluster
(widget models asserted on, no browser), static fallbacks, clean stops."""

from __future__ import annotations

import re
import sys
import threading
import time
from collections import Counter

import pytest

import raylite
from raylite.testing import SignalActor, wait_for_condition
from raylite.widgets import render as R
from raylite.widgets import render_autoscaler as RA
from raylite.widgets import render_placement as RP
from raylite.widgets import render_timeline as RT
from raylite.widgets import updater

pytestmark = pytest.mark.timeout(60)


def node(nid, cpu=2.0, avail=2.0, alive=True, labels=None, **kw):
    return {"node_id": nid, "alive": alive, "resources": {"CPU": cpu},
            "available": {"CPU": avail}, "labels": {"raylite.io/node-id": nid,
                                                    **(labels or {})},
            "store_used": kw.pop("store_used", 0), "store_capacity": kw.pop("cap", 0),
            "host": "h", "idle_s": 0.0, **kw}


def widths(html: str) -> list[str]:
    return re.findall(r"width:([\d.]+)%", html)


def no_widget_threads() -> bool:
    return updater.current() is None and not any(
        t.name in ("raylite-widgets", "raylite-events") for t in threading.enumerate())


# ------------------------------------------------------------------ pure renderers
def test_node_card_bars_labels_workers_tasks():
    n = node("node0-aa", cpu=4, avail=1, labels={"zone": "a"}, store_used=512 << 20,
             cap=2 << 30, node_type="cpu_small")
    html = R.node_card(n, workers=[{"state": "leased"}, {"state": "leased"},
                                   {"state": "idle"}],
                       actors=[{"class_name": "Counter", "state": "ALIVE"}],
                       running=Counter({"train": 2}))
    assert 'data-node-id="node0-aa"' in html and "alive" in html
    assert widths(html) == ["75.0", "25.0"]  # CPU 3 of 4, store 512 MiB of 2 GiB
    assert "3/4" in html and "512.0 MiB/2.0 GiB" in html
    assert "zone=a" in html and "raylite.io/node-id" not in html
    assert "cpu_small" in html
    assert "workers: 3 (1 idle, 2 leased)" in html
    assert "running tasks: <b>2</b> (train ×2)" in html
    assert "actors: 1 (Counter)" in html


def test_dead_node_card_and_header():
    state = {"nodes": [node("n10", alive=False), node("n2", avail=0)], "workers": [],
             "actors": [], "demand": {"requests": [{"demand": {"CPU": 1}}],
                                      "placement_groups": []}}
    html = R.cluster_html(state, running={})
    assert "dead" in R.node_card(state["nodes"][0]) and "opacity:.55" in html
    assert "1 node alive, 1 dead" in html and "CPU 2/2 used" in html
    assert "1 pending" in html
    assert html.index("n2") < html.index("n10")  # natural order of ids


def test_running_by_node_drops_tasks_of_idle_workers():
    tasks = [{"task_id": "1", "name": "f", "state": "RUNNING", "node_id": "a",
              "worker_id": "w1"},
             {"task_id": "2", "name": "f", "state": "RUNNING", "node_id": "a",
              "worker_id": "w2"},
             {"task_id": "3", "name": "g", "state": "FINISHED", "node_id": "a",
              "worker_id": "w1"}]
    assert R.running_by_node(tasks) == {"a": Counter({"f": 2})}
    workers = [{"worker_id": "w1", "state": "leased"}, {"worker_id": "w2", "state": "idle"}]
    assert R.running_by_node(tasks, workers) == {"a": Counter({"f": 1})}


def test_render_escapes_user_text():
    html = R.node_card(node("n<1>", labels={"k": "<script>"}))
    assert "<script>" not in html and "&lt;script&gt;" in html


def pg(pid, name, bundles, state="CREATED", strategy="PACK", created=0.0):
    return {"placement_group_id": pid, "name": name, "strategy": strategy, "state": state,
            "created_at": created, "infeasible": False,
            "bundles": [{"bundle_index": i, "resources": r, "node_id": n,
                         "available": dict(r), "label_selector": sel or {}}
                        for i, (r, n, sel) in enumerate(bundles)]}


PG_STATE = {
    "nodes": [node("n1", cpu=4, labels={"zone": "a"}), node("n2", cpu=2)],
    "placement_groups": [
        pg("g2", "spread", [({"CPU": 1}, "n1", {"zone": "a"}), ({"CPU": 1}, "n2", None)],
           strategy="SPREAD", created=2.0),
        pg("g1", "pack", [({"CPU": 2}, "n1", None)], created=1.0),
        pg("g3", "big", [({"CPU": 8}, None, {"zone": "in(a,b)"})], state="PENDING",
           created=3.0),
        pg("g0", "old", [({"CPU": 1}, None, None)], state="REMOVED", created=0.5)],
}


def test_group_colors_stable_and_distinct():
    colors = RP.group_colors(PG_STATE["placement_groups"])
    assert colors["g0"] == R.PALETTE[0] and colors["g1"] == R.PALETTE[1]  # creation order
    assert len(set(colors.values())) == 4


def test_placement_bundles_on_nodes_and_pending():
    cards = RP.placement_cards(PG_STATE)
    colors = RP.group_colors(PG_STATE["placement_groups"])
    assert list(cards) == ["n1", "n2"]
    n1 = cards["n1"]
    # a segment per bundle on n1 (pack: CPU 2 of 4, spread #0: CPU 1 of 4), group colours
    assert widths(n1) == ["50.0", "25.0"] and "3/4 reserved" in n1
    assert colors["g1"] in n1 and colors["g2"] in n1 and colors["g3"] not in n1
    assert "zone: a" in n1 and "<b>spread</b> #0" in n1 and "<b>spread</b> #1" in cards["n2"]
    pending = RP.pending_bundles(PG_STATE)
    assert "pending bundles (1)" in pending and "<b>big</b> #0" in pending
    assert "zone: in(a,b)" in pending and "dashed" in pending
    table = RP.groups_table(PG_STATE)
    assert "SPREAD" in table and "PENDING" in table and "1/2" not in table
    assert "old" not in table and "old" in RP.groups_table(PG_STATE, show_removed=True)
    assert "4 (" not in RP.placement_header(PG_STATE)  # removed groups not counted
    assert "3 (2 created, 1 pending)" in RP.placement_header(PG_STATE)


STATUS = {
    "running": True,
    "node_types": {
        "spot": {"resources": {"CPU": 1}, "labels": {"market": "spot"}, "min_workers": 0,
                 "max_workers": 2, "running": 0, "launching": 0, "availability": 0.0,
                 "last_failure": 105.0, "launches": 1, "failures": 1},
        "ondemand": {"resources": {"CPU": 1}, "labels": {}, "min_workers": 0,
                     "max_workers": 1, "running": 1, "launching": 0, "availability": 1.0,
                     "last_failure": None, "launches": 1, "failures": 0}},
    "unavailable": {"spot": {"score": 0.0, "last_failure": 105.0}},
    "decisions": [
        {"time": 101.0, "action": "launch", "node_type": "spot", "count": 1,
         "reason": "pending: 1 task {CPU: 1}"},
        {"time": 105.0, "action": "launch_failed", "node_type": "spot", "count": 1,
         "reason": "spot-1: not running after 4s (launch timeout)"},
        {"time": 105.0, "action": "launch", "node_type": "ondemand", "count": 1,
         "reason": "pending: 1 task {CPU: 1}"}],
}


def test_autoscaler_samples_from_state_and_fallbacks():
    state = {"time": 100.0, "autoscaler": STATUS, "nodes": [],
             "demand": {"requests": [{}, {}], "placement_groups": [
                 pg("g", "", [({"CPU": 1}, None, None), ({"CPU": 1}, "n1", None)],
                    state="PENDING")]}}
    assert RA.sample(state) == {"t": 100.0, "pending": 3, "unavailable": ["spot"],
                                "types": {"spot": [0, 0], "ondemand": [1, 0]}}
    # no autoscaler report: nodes counted by their node type; summary pending counts
    bare = {"time": 1.0, "nodes": [node("a", node_type="cpu"), node("b", node_type="cpu"),
                                   node("c", node_type="cpu", alive=False)]}
    assert RA.sample(bare)["types"] == {"cpu": [2, 0]} and RA.sample(bare)["pending"] == 0
    assert RA.pending_count({"autoscaler": {"pending": {"requests": 2,
                                                         "placement_groups": 1}}}) == 3
    merged = RA.merge_decisions(STATUS["decisions"][:2], STATUS["decisions"])
    assert [d["time"] for d in merged] == [101.0, 105.0, 105.0]


def test_autoscaler_timeline_svg_markers_bands_and_reasons():
    samples = [{"t": 100.0 + i, "pending": 1 if i < 6 else 0, "types": {
        "spot": [0, 1 if 1 <= i < 5 else 0], "ondemand": [1 if i >= 6 else 0, 0]},
        "unavailable": ["spot"] if i >= 5 else []} for i in range(10)]
    html = RA.autoscaler_html(STATUS, samples, STATUS["decisions"], now=110.0)
    svg = html[html.index("<svg"):html.index("</svg>")]
    assert svg.count('data-action="launch"') == 2 and 'data-action="launch_failed"' in svg
    assert "launch timeout" in svg  # the reason, as the marker's tooltip
    assert svg.count("unavailable</title>") == 1  # one red band for spot
    assert ">spot</text>" in svg and ">ondemand</text>" in svg  # a lane per type
    colors = RA.type_colors(["spot", "ondemand"])
    assert colors["spot"] in svg and colors["ondemand"] in svg and RA.PENDING_COLOR in svg
    assert "unavailable: spot (score 0.00)" in html and "1 pending" not in html
    table = RA.node_types_table(STATUS, now=110.0)
    assert "market=spot" in table and "unavailable 0.00" in table and "failed 5s ago" in table
    log = RA.decisions_list(STATUS["decisions"])
    # newest first
    assert log.index("<b>ondemand</b>") < log.index("launch timeout") < log.rindex("<b>spot")
    assert "no report yet" in RA.autoscaler_html(None, [], [])


def task(name, node_id, worker, start, end, state="FINISHED", **kw):
    return {"name": name, "node_id": node_id, "worker_id": worker, "start": start,
            "end": end, "state": state, "error": None, **kw}


def test_gantt_lanes_bars_failures_and_running():
    nan = float("nan")  # what a DataFrame holds for a missing end
    recs = [task("mod.<locals>.f", "node1-x", "w1", 10.0, 11.0),
            task("g", "node0-x", "w2", 10.5, 12.0, state="FAILED", error="boom"),
            task("f", "node0-x", "w3", None, nan, state="RUNNING", sent=11.0),
            task("f", None, None, None, None, state="PENDING_NODE_ASSIGNMENT")]
    items = RT.bars(recs, now=14.0)
    assert [b["name"] for b in items] == ["f", "g", "f"]  # oldest first, short names
    assert items[2]["running"] and items[2]["end"] == 14.0 and items[1]["failed"]
    svg = RT.gantt_svg(recs, now=14.0, width=560)  # 400 px of plot for 4 s
    assert svg.count('class="raylite-task"') == 3 and "3 tasks on 3 workers" in svg
    assert svg.index("node0-x · w2") < svg.index("node0-x · w3") < svg.index("node1-x")
    assert f'stroke="{R.RED}"' in svg and 'stroke-dasharray="3 2"' in svg
    assert 'x="150.0" y="' in svg and 'width="100.0"' in svg  # f: 10-11 s on 0-4 s
    assert "g · failed · 1.5 s" in svg
    many = [task("t", "n", "w", float(i), i + 0.5) for i in range(50)]
    assert "the latest 10 of 50" in RT.gantt_svg(many, max_bars=10)
    assert "no tasks" in RT.gantt_svg([])


# ------------------------------------------------------------------ live views
def card_text(view) -> str:
    return view._header.value + "".join(c.value for c in view._box.children)


def test_cluster_view_live(two_nodes):
    view = raylite.widgets.ClusterView()
    assert view.live and len(view._box.children) == 2
    ids = [n["NodeID"] for n in raylite.nodes()]
    assert all(i in card_text(view) for i in ids)
    assert "zone=a" in card_text(view) and "zone=b" in card_text(view)

    signal = raylite.remote(num_cpus=0, label_selector={"zone": "a"})(SignalActor).remote()

    @raylite.remote(label_selector={"zone": "b"})
    def blocked(s):
        raylite.get(s.wait.remote())

    def card(zone: str) -> str:
        return next(c.value for c in view._box.children if f"zone={zone}" in c.value)

    ref = blocked.remote(signal)
    # the task on b, and the actor call it made on a (reported by the task's worker)
    wait_for_condition(lambda: "(blocked)" in card("b") and "(wait)" in card("a"),
                       timeout=10)
    assert "running tasks: <b>1</b> (blocked)" in card("b")
    assert "actors: 1 (SignalActor)" in card("a")
    assert "2 tasks running" in view._header.value
    cards_before = view._box.children
    raylite.get(signal.send.remote())
    raylite.get(ref)
    wait_for_condition(lambda: "0 tasks running" in view._header.value, timeout=10)
    assert view._box.children == cards_before  # cards are updated in place, not rebuilt
    assert "node" in repr(view) and "blocked" not in repr(view)
    view.close()
    assert view.closed and not view.live
    wait_for_condition(no_widget_threads, timeout=5)


def test_cluster_view_nodes_join_and_die(monkeypatch):
    from raylite.cluster_utils import Cluster

    monkeypatch.setenv("RAYLITE_NODE_TIMEOUT_S", "1.0")  # the head marks it dead sooner
    cluster = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 1})
    try:
        view = raylite.widgets.ClusterView()
        assert len(view._box.children) == 1
        extra = cluster.add_node(num_cpus=1, labels={"role": "extra"})

        def extra_card() -> str:
            return next((c.value for c in view._box.children if "role=extra" in c.value), "")
        wait_for_condition(lambda: extra.node_id in extra_card(), timeout=10)
        assert "alive" in extra_card() and "2 nodes alive" in view._header.value
        cluster.remove_node(extra)
        wait_for_condition(lambda: ">dead<" in extra_card(), timeout=10)
        assert "1 node alive, 1 dead" in view._header.value
        assert "DEAD" in repr(view)
    finally:
        cluster.shutdown()


def test_views_stop_at_shutdown():
    raylite.init(num_cpus=1)
    try:
        views = [raylite.widgets.ClusterView(), raylite.widgets.ClusterView()]
        assert updater.current() is not None and all(v.live for v in views)
    finally:
        raylite.shutdown()
    wait_for_condition(no_widget_threads, timeout=5)
    for v in views:
        assert not v.live and "shutdown" in v._status_w.value
        assert "node" in v.html()  # the last state stays on show
    assert not raylite.is_initialized()


def test_view_without_cluster_does_not_start_one():
    view = raylite.widgets.ClusterView()
    assert not raylite.is_initialized() and not view.live
    assert "not initialized" in view.html() and "not initialized" in repr(view)
    view._repr_mimebundle_()  # displaying it does not start one either
    assert not raylite.is_initialized()


def test_static_fallback_without_ipywidgets(cluster, monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import ipywidgets fails
    view = raylite.widgets.ClusterView()
    assert view.widget is None and not view.live
    bundle = view._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}
    node_id = raylite.nodes()[0]["NodeID"]
    assert node_id in bundle["text/html"] and node_id in bundle["text/plain"]
    assert "raylite-node" in view._repr_html_()


def test_mimebundle_has_widget_and_html(cluster):
    view = raylite.widgets.ClusterView(live=False)
    bundle = view._repr_mimebundle_()
    assert bundle[  # the widget for JupyterLab, HTML for GitHub/nbviewer
        "application/vnd.jupyter.widget-view+json"]["model_id"] == view.widget.model_id
    assert "raylite-node" in bundle["text/html"]
    view.close()


def test_placement_view_live(two_nodes):
    from raylite.util import placement_group, remove_placement_group

    view = raylite.widgets.PlacementView()
    assert "no placement groups" in view._groups.value and len(view._box.children) == 2
    g = placement_group([{"CPU": 0.5}, {"CPU": 0.5}], strategy="STRICT_SPREAD", name="demo",
                        bundle_label_selector=[{"zone": "a"}, {"zone": "b"}])
    big = placement_group([{"CPU": 4}], name="toobig")
    assert g.wait(10)

    def placed() -> bool:
        cards = [c.value for c in view._box.children]
        return all("<b>demo</b>" in c for c in cards) and "toobig" in view._pending.value
    wait_for_condition(placed, timeout=10)
    assert "STRICT_SPREAD" in view._groups.value and "zone: a" in view._groups.value
    assert "demo STRICT_SPREAD CREATED" in repr(view)
    color = RP.group_colors(view.state["placement_groups"])[g.id.hex()]
    assert all(color in c.value for c in view._box.children)
    remove_placement_group(g)
    remove_placement_group(big)
    wait_for_condition(lambda: "demo" not in view._groups.value and not view._pending.value,
                       timeout=10)
    assert "no placement groups" in repr(view) and "demo" not in repr(view)
    view.close()


def test_autoscaler_view_live_failure_and_fallback():
    from raylite import autoscaler

    raylite.init(num_cpus=0, autoscaler={
        "node_types": {"broken": {"resources": {"CPU": 1}}, "fine": {"resources": {"CPU": 1}}},
        "interval_s": 0.1, "idle_timeout_s": 60, "launch_timeout_s": 15})
    try:
        autoscaler.get().provider.set_failing("broken")
        view = raylite.widgets.AutoscalerView()
        assert "broken" in view._table.value and view.live

        @raylite.remote
        def one():
            return 1

        assert raylite.get(one.remote(), timeout=30) == 1
        wait_for_condition(lambda: 'data-action="launch_failed"' in view._svg.value and
                           'data-action="node_running"' in view._svg.value, timeout=10)
        assert "failed (simulated)" in view._log.value
        assert "unavailable: broken" in view._header.value
        assert 'data-node-type="fine"' in view._table.value
        assert len(view.samples) >= 2  # a point per refresh (the demand may come and go
        # between two: the view samples at most 4 times a second)
        assert "launch_failed broken" in repr(view)
    finally:
        raylite.shutdown()
    wait_for_condition(no_widget_threads, timeout=5)


def test_timeline_from_cluster_live_and_from_a_dataframe(cluster):
    @raylite.remote
    def square(x):
        return x * x

    raylite.get([square.remote(i) for i in range(4)])
    static = raylite.widgets.Timeline()
    wait_for_condition(lambda: (static.refresh() or True) and
                       static._chart.value.count('data-name="square"') == 4, timeout=10)
    live = raylite.widgets.Timeline(live=True)
    assert live.live and not static.live

    @raylite.remote
    def cube(x):
        return x ** 3

    raylite.get([cube.remote(i) for i in range(3)])
    wait_for_condition(lambda: live._chart.value.count('data-name="cube"') == 3, timeout=10)
    df = raylite.timeline()
    live.close()
    raylite.shutdown()
    offline = raylite.widgets.Timeline(df)  # no cluster needed
    assert offline._chart.value.count('class="raylite-task"') == 7
    assert "7 tasks" in repr(offline) and "square" in offline.html()


def test_progress_returns_values(cluster, capsys):
    @raylite.remote
    def inc(x):
        return x + 1

    assert raylite.widgets.progress([inc.remote(i) for i in range(5)]) == [1, 2, 3, 4, 5]
    assert "5/5" in capsys.readouterr().err  # tqdm's text bar outside a notebook


def test_import_stays_cheap():
    import subprocess

    code = ("import sys, raylite, raylite.widgets; assert 'raylite.widgets' in sys.modules; "
            "assert 'ipywidgets' not in sys.modules, 'ipywidgets imported before a view'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    code = "import sys, raylite; assert 'raylite.widgets' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_one_throttled_updater_for_all_views(cluster):
    views = [raylite.widgets.ClusterView(), raylite.widgets.PlacementView(),
             raylite.widgets.AutoscalerView()]
    names = [t.name for t in threading.enumerate()]
    assert names.count("raylite-widgets") == 1 and names.count("raylite-events") == 1
    times = []
    apply = views[0]._apply
    views[0]._apply = lambda state: (times.append(time.monotonic()), apply(state))

    @raylite.remote
    def tiny(i):
        return i

    def burst() -> bool:  # task events in a stream, coalesced into few refreshes
        raylite.get([tiny.remote(i) for i in range(30)])
        return len(times) >= 4
    wait_for_condition(burst, timeout=10)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= updater.MIN_INTERVAL * 0.9, gaps  # at most 4 refreshes a second
    views[0].close()
    assert views[1].live and updater.current() is not None
    for v in views[1:]:
        v.close()
    wait_for_condition(no_widget_threads, timeout=5)
