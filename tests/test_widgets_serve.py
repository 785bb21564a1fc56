"""The ServeView: its pure renderer on hand-made status, and the live view on a real Serve
app (widget models asserted on, no browser), its static forms, and clean stops."""

from __future__ import annotations

import re
import socket
import sys
import threading

import httpx
import pytest

import raylite
from raylite.testing import serve_auth_headers, wait_for_condition
from raylite.widgets import render_serve as RS
from raylite.widgets import updater

pytestmark = pytest.mark.timeout(60)


def dep(status="HEALTHY", target=1, running=1, starting=0, ongoing=0, queued=0, **kw):
    states = {"RUNNING": running, **({"STARTING": starting} if starting else {})}
    return {"status": status, "status_trigger": "", "message": "", "replica_states": states,
            "target_num_replicas": target, "running_replicas": running,
            "ongoing_requests": ongoing, "queued_requests": queued, **kw}


def node(name, *calls, ingress=False, app="shop"):
    return {"name": name, "app_name": app, "is_ingress": ingress,
            "outbound_deployments": [{"name": c.split("/")[-1],
                                      "app_name": c.split("/")[0] if "/" in c else app}
                                     for c in calls]}


# ingress Front -> Cart, Front -> Pricing, Pricing -> Cart, Pricing -> other app's Tax,
# Cart -> Front (a call back), Audit (no path from the ingress reaches it)
SHOP = {
    "status": "RUNNING", "message": "", "last_deployed_time_s": 0.0, "route_prefix": "/shop",
    "ingress_deployment": "Front", "external_scaler_enabled": False,
    "deployments": {"Front": dep(), "Cart": dep("UPSCALING", target=3, running=1,
                                                 starting=2, ongoing=4, queued=2),
                    "Pricing": dep(), "Audit": dep("UNHEALTHY", message="check failed")},
    "deployment_topology": {"app_name": "shop", "ingress_deployment": "Front", "nodes": {
        "Front": node("Front", "Cart", "Pricing", ingress=True), "Cart": node("Cart", "Front"),
        "Pricing": node("Pricing", "Cart", "tax/Tax"), "Audit": node("Audit")}},
}
STATUS = {"applications": {"shop": SHOP, "tax": {
    "status": "RUNNING", "message": "", "last_deployed_time_s": 0.0, "route_prefix": None,
    "ingress_deployment": "Tax",
    "deployments": {"Tax": dep()}, "deployment_topology": {}}},
    "proxies": {"node0": "HEALTHY"}}


def test_layers_breadth_first_with_cycles_and_other_apps():
    cols = RS.layers(SHOP["deployment_topology"], "shop")
    assert cols == [[("shop", "Front"), ("shop", "Audit")],
                    [("shop", "Cart"), ("shop", "Pricing")], [("tax", "Tax")]]
    assert RS.layers({"nodes": {}}, "x") == []


def test_topology_svg_boxes_edges_ingress_and_status():
    svg = RS.topology_svg("shop", SHOP)
    nodes = re.findall(r'class="raylite-serve-node" data-app="(\w+)" data-deployment="(\w+)"',
                       svg)
    assert nodes == [("shop", "Front"), ("shop", "Audit"), ("shop", "Cart"),
                     ("shop", "Pricing"), ("tax", "Tax")]
    edges = re.findall(r'data-from="(\w+)" data-to="(\w+)"', svg)
    assert sorted(edges) == [("Cart", "Front"), ("Front", "Cart"), ("Front", "Pricing"),
                             ("Pricing", "Cart"), ("Pricing", "Tax")]
    assert svg.count('data-ingress="true"') == 1 and 'data-deployment="Front" ' \
        'data-ingress="true"' in svg
    assert 'data-external="true"' in svg and "tax/Tax" in svg  # another app's deployment
    assert ">HTTP<" in svg and ">/shop<" in svg and "1/3 replicas · 4 ongoing · 2 queued" in svg
    assert f'fill="{RS.STATUS_COLORS["UNHEALTHY"]}"' in svg and "check failed" in svg
    # no topology (e.g. Ray's own status): boxes without edges, the ingress still marked
    bare = RS.topology_svg("tax", STATUS["applications"]["tax"])
    assert "raylite-serve-edge" not in bare and 'data-ingress="true"' in bare
    assert ">handle<" in bare  # no HTTP route: called through handles only


def samples_of(key, rows):
    return [{"t": 100.0 + i, "deps": {key: RS.dep_sample(dep(**r))}} for i, r in
            enumerate(rows)]


def test_chart_replicas_against_target_and_requests():
    key = ("shop", "Cart")
    rows = [dict(target=1, running=1), dict(target=3, running=1, starting=2, ongoing=6),
            dict(target=3, running=3, ongoing=5, queued=3), dict(target=3, running=3)]
    svg = RS.chart_svg(samples_of(key, rows), key, "#123456", now=103.0, window_s=60,
                       width=470)
    # 30 s shown at least: x = 30 + 430 * (t - 73) / 30; replicas: y = 20 + 62 - 62 * v / 3
    running = re.search(r'<path d="([^"]+)"[^>]*class="raylite-running"', svg).group(1)
    assert running == "M417.0,61.3V61.3H431.3V20.0H445.7V20.0H460.0"
    target = re.search(r'<path d="([^"]+)"[^>]*class="raylite-target"', svg).group(1)
    assert target == "M417.0,61.3V20.0H431.3V20.0H445.7V20.0H460.0"
    assert "raylite-starting" in svg and "raylite-ongoing" in svg and "raylite-queued" in svg
    assert "running replicas (3)" in svg and "target (3)" in svg and "queued (0)" in svg
    assert "#123456" in svg and ">-30s<" in svg and ">now<" in svg
    assert 'data-peak-running="3"' in svg
    assert "raylite-running" not in RS.chart_svg([], key)  # nothing recorded yet


def test_serve_html_header_cards_and_text():
    status = RS.normalize(STATUS)
    point = RS.sample(status, 100.0)
    colors = RS.assign_colors({}, point["deps"])
    assert len(set(colors.values())) == 5 and RS.assign_colors(colors, [("shop", "Cart")]) \
        == colors
    cards = RS.deployment_cards(status, [point], colors)
    assert list(cards) == [("shop", "Front"), ("shop", "Audit"), ("shop", "Cart"),
                           ("shop", "Pricing"), ("tax", "Tax")]  # ingress first
    assert "<b>1</b>/3 replicas running, 2 starting · 4 ongoing · 2 queued" in \
        cards[("shop", "Cart")]
    html = RS.serve_html(status, [point], colors)
    assert "2 applications (RUNNING)" in html and "5 deployments" in html
    assert "5/7 replicas running" in html and "4 ongoing, 2 queued requests" in html
    assert "HTTP proxy HEALTHY" in html and "route <code>/shop</code>" in html
    assert "no HTTP route" in html and html.count("raylite-serve-chart") == 5
    assert "not running" in RS.serve_html(None, [])
    assert "cannot read the status: boom" in RS.serve_header(status, "boom")
    assert "Cart: UPSCALING, 1/3 replicas, 4 ongoing, 2 queued" in RS.serve_text(status)
    evil = {"applications": {"<script>": dict(SHOP, deployments={"<script>": dep()},
                                              deployment_topology={})}}
    html = RS.serve_html(evil, [RS.sample(evil, 1.0)])
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_normalize_serve_status_and_rest_payload():
    from raylite.serve.schema import ServeStatus

    st = RS.normalize(ServeStatus.from_dict(STATUS))  # what serve.status() returns
    assert st["applications"]["shop"]["deployments"]["Cart"]["target_num_replicas"] == 3
    assert RS.sample(st, 1.0) == RS.sample(RS.normalize(STATUS), 1.0)
    rest = {"applications": {"shop": dict(SHOP, deployments={
        n: dict(d, name=n, replicas=[], deployment_config={}) for n, d in
        SHOP["deployments"].items()})}, "proxies": {"n": {"status": "HEALTHY"}}}
    assert RS.sample(RS.normalize(rest), 1.0)["deps"][("shop", "Cart")]["starting"] == 2
    assert "HTTP proxy HEALTHY" in RS.serve_header(RS.normalize(rest))
    assert RS.normalize(None) is None


# ------------------------------------------------------------------ live
def no_widget_threads() -> bool:
    return updater.current() is None and not any(
        t.name in ("raylite-widgets", "raylite-events") for t in threading.enumerate())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_view_live_scaling_topology_and_stops():
    from raylite import serve
    from raylite.widgets import ServeView

    raylite.init(num_cpus=2)
    try:
        view = ServeView()  # before Serve starts: it waits for it, and starts nothing
        assert view.live and "not running" in view._header.value
        port = free_port()
        serve.start(http_options={"port": port})

        @serve.deployment(ray_actor_options={"num_cpus": 0})
        class Model:
            def __call__(self, x):
                return x * 2

        @serve.deployment(ray_actor_options={"num_cpus": 0})
        class Front:
            def __init__(self, model):
                self.model = model

            async def __call__(self, request):
                return await self.model.remote(int(request.query_params["x"]))

        serve.run(Front.bind(Model.bind()), name="calc", route_prefix="/calc",
                  external_scaler_enabled=True)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/calc?x=21", timeout=10).text == "42"
        wait_for_condition(lambda: 'data-from="Front" data-to="Model"' in
                           view._topology.value, timeout=10)
        assert 'data-deployment="Front" data-ingress="true"' in view._topology.value

        def card(name: str) -> str:
            return next((c.value for c in view._box.children
                         if f'data-deployment="{name}"' in c.value), "")
        # the view's first readings may come before Model's replica runs (0 running)
        wait_for_condition(lambda: "<b>1</b>/1 replicas running" in card("Model"),
                           timeout=20)
        r = httpx.post(f"{base}/api/v1/applications/calc/deployments/Model/scale",
                       json={"target_num_replicas": 3}, timeout=10,
                       headers=serve_auth_headers())
        assert r.status_code == 200, r.text
        wait_for_condition(lambda: "<b>3</b>/3 replicas running" in card("Model"),
                           timeout=20)
        assert "running replicas (3)" in card("Model") and "3/3 replicas" in \
            view._topology.value and "<b>1</b>/1 replicas" in card("Front")
        seen = [h["running"] for h in view.history() if h["deployment"] == "Model"]
        # the chart's history, in order: (0 while starting), 1 before the scale, then 3
        assert seen == sorted(seen) and 1 in seen and seen[-1] == 3, seen
        assert "Model: HEALTHY, 3/3 replicas" in repr(view)
        # a second view of the same status, drawn from the REST payload, without a cluster
        static = ServeView(httpx.get(f"{base}/api/serve/applications/", timeout=10).json())
        assert not static.live and "3/3 replicas" in static.html()
        serve.shutdown()
        wait_for_condition(lambda: "not running" in view._header.value, timeout=10)
        assert card("Model") == ""  # the deleted app's charts go
        closed = ServeView()
        closed.close()
        assert closed.closed and not closed.live and view.live
    finally:
        raylite.shutdown()
    wait_for_condition(no_widget_threads, timeout=5)
    assert not view.live and "shutdown" in view._status_w.value
    assert "serve is not running" in repr(view)


def test_serve_view_static_forms(monkeypatch):
    from raylite.widgets import ServeView

    view = ServeView()
    assert not raylite.is_initialized() and "not initialized" in view.html()
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # no widget frontend at all
    static = ServeView(STATUS)
    assert static.widget is None and not static.live
    bundle = static._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}
    assert 'data-from="Pricing" data-to="Tax"' in bundle["text/html"]
    assert "Cart: UPSCALING" in bundle["text/plain"]
    assert static.history()[0]["deployment"] == "Front"
