"""Replica counts over time: autoscaling up and down with load, from zero, the
downscaling order (newest first), and replicas placed in placement groups."""

from __future__ import annotations

import httpx
import pytest
from fixtures import Signal

from raylite import serve
from raylite.testing import serve_auth_headers as AUTH
from raylite.testing import wait_for_condition

pytestmark = pytest.mark.timeout(60)

NO_CPU = {"num_cpus": 0}

FAST = {"target_ongoing_requests": 1, "upscale_delay_s": 0.2, "downscale_delay_s": 0.5,
        "look_back_period_s": 0.3, "metrics_interval_s": 0.1}


def deployment_status(app: str, dep: str):
    return serve.status().applications[app].deployments[dep]


def test_autoscaling_follows_load_up_and_down(serve_url):
    sig = Signal.remote()

    @serve.deployment(ray_actor_options=NO_CPU, max_ongoing_requests=2,
                      autoscaling_config=dict(FAST, min_replicas=1, max_replicas=3))
    class Busy:
        def __init__(self, signal):
            self.signal = signal

        async def __call__(self):
            await self.signal.wait.remote()
            return "ok"

    h = serve.run(Busy.bind(sig), name="auto", route_prefix=None)
    assert deployment_status("auto", "Busy").running_replicas == 1
    pending = [h.remote() for _ in range(6)]  # 6 ongoing / target 1 -> 3 (max)
    wait_for_condition(lambda: deployment_status("auto", "Busy").running_replicas == 3,
                       timeout=20, message="scaled up to 3")
    sig.send.remote()
    assert [r.result(timeout_s=10) for r in pending] == ["ok"] * 6
    wait_for_condition(lambda: deployment_status("auto", "Busy").running_replicas == 1,
                       timeout=20, message="scaled back down to 1")
    assert deployment_status("auto", "Busy").target_num_replicas == 1
    serve.delete("auto")


def test_scale_from_zero_on_the_first_request(serve_url):
    @serve.deployment(ray_actor_options=NO_CPU,
                      autoscaling_config=dict(FAST, min_replicas=0, max_replicas=2,
                                              upscale_delay_s=30, downscale_delay_s=0.3))
    def lazy(request):
        return "awake"

    h = serve.run(lazy.bind(), name="zero", route_prefix="/zero")
    assert deployment_status("zero", "lazy").running_replicas == 0
    assert h.remote(None).result(timeout_s=20) == "awake"  # at once, not after 30 s
    wait_for_condition(lambda: deployment_status("zero", "lazy").running_replicas == 0,
                       timeout=20, message="back to zero when idle")
    assert httpx.get(f"{serve_url}/zero", timeout=20).text == "awake"  # over HTTP too
    serve.delete("zero")


def test_downscaling_stops_the_newest_replicas(serve_url):
    @serve.deployment(ray_actor_options=NO_CPU)
    def d(request):
        return "x"

    serve.run(d.bind(), name="order", route_prefix=None, external_scaler_enabled=True)
    url = f"{serve_url}/api/v1/applications/order/deployments/d/scale"

    def replicas():
        dep = httpx.get(f"{serve_url}/api/serve/applications/").json()[
            "applications"]["order"]["deployments"]["d"]
        return [r for r in dep["replicas"] if r["state"] == "RUNNING"], dep["replicas"]

    first = replicas()[0][0]["replica_id"]
    assert httpx.post(url, headers=AUTH(), json={"target_num_replicas": 3}).status_code == 200
    wait_for_condition(lambda: len(replicas()[0]) == 3, timeout=20)
    by_age = [r["replica_id"] for r in sorted(replicas()[0], key=lambda r: r["start_time_s"])]
    assert by_age[0] == first
    assert httpx.post(url, headers=AUTH(), json={"target_num_replicas": 2}).status_code == 200
    wait_for_condition(lambda: len(replicas()[1]) == 2, timeout=20)
    assert [r["replica_id"] for r in replicas()[1]] == by_age[:2]  # the newest went
    assert httpx.post(url, headers=AUTH(), json={"target_num_replicas": 1}).status_code == 200
    wait_for_condition(lambda: len(replicas()[1]) == 1, timeout=20)
    assert replicas()[1][0]["replica_id"] == first
    serve.delete("order")


def test_replicas_in_placement_groups(serve_url):
    @serve.deployment(ray_actor_options={"num_cpus": 0.25},
                      placement_group_bundles=[{"CPU": 0.25}], num_replicas=2)
    def placed(request):
        return "placed"

    h = serve.run(placed.bind(), name="pg", route_prefix=None)
    assert h.remote(None).result() == "placed"
    from raylite.util import placement_group_table

    wait_for_condition(lambda: sum(1 for pg in placement_group_table().values()
                                   if pg["state"] == "CREATED") >= 2)
    serve.delete("pg")
    wait_for_condition(lambda: all(pg["state"] == "REMOVED"
                                   for pg in placement_group_table().values()))
