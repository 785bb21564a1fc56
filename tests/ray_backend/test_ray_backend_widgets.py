"""raylite's widgets on a real Ray cluster: the views read Ray's state through the Ray
backend's adapter (``raylite.backends.ray_backend.state``: Ray's node table and labels,
its placement group and actor tables, its timeline) and its polled events, as they read
raylite's own head.

Left out: the views' rendering tests (``tests/test_widgets.py``) need no cluster, and the
AutoscalerView's live test drives raylite's local autoscaler, which Ray has not; here it
must say that Ray's autoscaler status is not read."""

from __future__ import annotations

import pytest

import raylite
from raylite.testing import wait_for_condition
from raylite.util import placement_group, remove_placement_group

pytest.importorskip("ipywidgets")
pytestmark = pytest.mark.timeout(240)


def _cards(view) -> str:
    return "".join(c.value for c in view._box.children)


def test_cluster_view_shows_the_ray_node_its_labels_and_actors(shared_cluster):
    view = raylite.widgets.ClusterView()
    try:
        node = raylite.nodes()[0]["NodeID"]
        wait_for_condition(lambda: node in _cards(view) and "zone=a" in _cards(view),
                           timeout=30)

        @raylite.remote(num_cpus=0)
        class Watched:
            def ping(self):
                return 1

        a = Watched.options(name="watched").remote()
        raylite.get(a.ping.remote())
        wait_for_condition(lambda: "watched" in _cards(view), timeout=30)  # a polled event
        raylite.kill(a)
    finally:
        view.close()


def test_placement_view_shows_a_ray_placement_group(shared_cluster):
    view = raylite.widgets.PlacementView()
    g = placement_group([{"CPU": 0.5}, {"custom": 1}], strategy="PACK", name="ray-demo",
                        bundle_label_selector=[{"zone": "a"}, {"pool": "train"}])
    try:
        assert g.wait(60)
        wait_for_condition(lambda: "<b>ray-demo</b>" in _cards(view) and
                           "ray-demo" in view._groups.value, timeout=30)
        assert "PACK" in view._groups.value
    finally:
        remove_placement_group(g)
    wait_for_condition(lambda: "ray-demo" not in view._groups.value, timeout=30)
    view.close()


def test_timeline_shows_the_tasks_ray_ran(shared_cluster):
    @raylite.remote
    def square(x):
        return x * x

    raylite.get([square.remote(i) for i in range(4)])
    view = raylite.widgets.Timeline()
    wait_for_condition(lambda: (view.refresh() or True) and
                       view._chart.value.count("square") >= 4, timeout=60)
    view.close()


def test_autoscaler_view_says_ray_has_no_status_here(shared_cluster):
    view = raylite.widgets.AutoscalerView()
    try:
        wait_for_condition(lambda: "Ray backend" in view._header.value, timeout=30)
        assert "ray status" in view._header.value
    finally:
        view.close()


def test_event_stream_on_ray_reports_actors_and_groups(shared_cluster):
    import queue
    import time

    from raylite.util import state

    @raylite.remote(num_cpus=0)
    class Evented:
        def ping(self):
            return 1

    with state.subscribe(["actor", "placement_group"]) as events:
        a = Evented.options(name="evented").remote()
        raylite.get(a.ping.remote())
        g = placement_group([{"custom": 1}], name="evented-pg")
        assert g.wait(60)
        seen: set = set()
        deadline = time.monotonic() + 30
        while seen != {"actor", "placement_group"} and time.monotonic() < deadline:
            try:
                topic, body = events.get(timeout=1)
            except queue.Empty:
                continue
            # each change is an event (PENDING_CREATION, then ALIVE / PENDING, CREATED)
            if (topic, body.get("name")) in (("actor", "evented"),
                                             ("placement_group", "evented-pg")) and \
                    body["state"] in ("ALIVE", "CREATED"):
                seen.add(topic)
        assert seen == {"actor", "placement_group"}
        remove_placement_group(g)
        raylite.kill(a)
