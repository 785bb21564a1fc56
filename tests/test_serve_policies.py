"""Serve's pure policies, without a cluster: the autoscaling window and decision rule,
power-of-two-choices routing, the downscaling order, batch forming, option checks."""

from __future__ import annotations

import random
import time

import pytest

from raylite import serve
from raylite.serve._private.autoscaling import AutoscalingPolicy, MetricWindow, desired_replicas
from raylite.serve._private.policy import choose_replica, replicas_to_stop
from raylite.serve.batching import form_batch
from raylite.serve.config import AutoscalingConfig, DeploymentConfig

pytestmark = pytest.mark.timeout(30)


# ---------------------------------------------------------------- metric window


def test_window_mean_max_min_and_eviction():
    w = MetricWindow(10.0)
    for t, v in [(0, 4), (1, 1), (2, 7), (3, 2)]:
        w.add(t, v)
    assert w.aggregate("mean") == pytest.approx(3.5)
    assert (w.aggregate("max"), w.aggregate("min")) == (7, 1)
    w.add(11.5, 3)  # evicts t=0 and t=1 (older than 11.5 - 10)
    assert len(w) == 3
    assert w.aggregate("mean") == pytest.approx(4.0)
    assert (w.aggregate("max"), w.aggregate("min")) == (7, 2)
    w.evict(100)
    assert w.aggregate("mean") is None


def test_window_matches_a_rescan_on_random_data():
    rng = random.Random(0)
    w = MetricWindow(5.0)
    points = []
    t = 0.0
    for _ in range(2000):
        t += rng.random()
        v = rng.randint(0, 50)
        w.add(t, v)
        points.append((t, v))
        live = [p for p in points if p[0] >= t - 5.0]
        vals = [p[1] for p in live]
        assert w.aggregate("max") == max(vals) and w.aggregate("min") == min(vals)
        assert w.aggregate("mean") == pytest.approx(sum(vals) / len(vals))


def test_window_aggregate_does_not_grow_with_the_window():
    def cost(n):
        w = MetricWindow(1e9)
        for i in range(n):
            w.add(float(i), float(i % 7))
        t0 = time.perf_counter()
        for _ in range(2000):
            w.aggregate("mean"), w.aggregate("max"), w.aggregate("min")
        return time.perf_counter() - t0
    small, big = min(cost(10) for _ in range(3)), min(cost(200_000) for _ in range(3))
    assert big < small * 5, (small, big)  # O(1): a 20,000x larger window is not slower


# ---------------------------------------------------------------- decision rule


def cfg(**kw):
    base = dict(min_replicas=1, max_replicas=10, target_ongoing_requests=2,
                upscale_delay_s=0, downscale_delay_s=0, look_back_period_s=10)
    base.update(kw)
    return AutoscalingConfig(**base)


def test_desired_replicas_rule():
    assert desired_replicas(cfg(), total=8, running=2) == 4   # ratio 2 -> double
    assert desired_replicas(cfg(), total=2, running=4) == 1   # ratio .25 -> ceil(1)
    assert desired_replicas(cfg(), total=4, running=2) == 2   # on target
    assert desired_replicas(cfg(max_replicas=3), total=100, running=2) == 3
    assert desired_replicas(cfg(min_replicas=2), total=0, running=4) == 2
    # factor damps the step: 2 * (1 + (2 - 1) * 0.5) = 3
    assert desired_replicas(cfg(upscaling_factor=0.5), total=8, running=2) == 3
    # 4 * (1 + (0.25 - 1) * 0.5) = 2.5 -> 3
    assert desired_replicas(cfg(downscaling_factor=0.5), total=2, running=4) == 3


def test_policy_waits_for_the_delay_in_one_direction():
    p = AutoscalingPolicy(cfg(upscale_delay_s=1.0, look_back_period_s=0.5))
    p.record(0.0, 8)
    assert p.decide(0.0, running=2, current=2) == 2   # direction starts
    p.record(0.6, 8)
    assert p.decide(0.6, running=2, current=2) == 2
    p.record(1.1, 8)
    assert p.decide(1.1, running=2, current=2) == 4   # held for 1 s
    p.record(1.3, 8)
    assert p.decide(1.3, running=4, current=4) == 4   # on target now: stays


def test_policy_direction_change_restarts_the_delay():
    p = AutoscalingPolicy(cfg(upscale_delay_s=1.0, downscale_delay_s=1.0,
                              look_back_period_s=0.1))
    p.record(0.0, 8)
    p.decide(0.0, running=2, current=2)
    p.record(0.5, 0)
    assert p.decide(0.5, running=2, current=2) == 2   # now down: restart
    p.record(1.2, 8)
    assert p.decide(1.2, running=2, current=2) == 2   # up again: restart
    p.record(2.3, 8)
    assert p.decide(2.3, running=2, current=2) == 4


def test_policy_scales_from_zero_at_once():
    p = AutoscalingPolicy(cfg(min_replicas=0, upscale_delay_s=60))
    p.record(0.0, 0)
    assert p.decide(0.0, running=0, current=0) == 0
    p.record(0.1, 3)
    assert p.decide(0.1, running=0, current=0) == 1


def test_autoscaling_config_validation():
    with pytest.raises(ValueError):
        AutoscalingConfig(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError):
        AutoscalingConfig(aggregation_function="median")
    with pytest.raises(ValueError):
        AutoscalingConfig(target_ongoing_requests=0)
    with pytest.raises(ValueError):
        DeploymentConfig(num_replicas=3, autoscaling_config={"max_replicas": 4})
    auto = DeploymentConfig(num_replicas="auto")
    assert auto.autoscaling_config.max_replicas == 100 and auto.initial_target() == 1
    with pytest.raises(ValueError):
        DeploymentConfig(max_ongoing_requests=0)
    with pytest.raises(ValueError):
        DeploymentConfig(ray_actor_options={"bogus": 1})


# ---------------------------------------------------------------- routing


def test_choose_replica_prefers_the_less_loaded_of_two():
    rng = random.Random(1)
    picks = [choose_replica([0, 4, 4, 4], 5, rng) for _ in range(300)]
    # replica 0 wins whenever it is sampled (half of the pairs)
    assert 0.4 < picks.count(0) / len(picks) < 0.6
    assert choose_replica([5, 5, 3], 5, rng) == 2       # both sampled full: scan
    assert choose_replica([5, 5], 5, rng) is None       # all full: queue
    assert choose_replica([], 5, rng) is None
    assert choose_replica([4], 5, rng) == 0


def test_choose_replica_spreads_load():
    rng = random.Random(2)
    load = [0] * 4
    for _ in range(400):
        i = choose_replica(load, 1000, rng)
        load[i] += 1
    assert max(load) - min(load) <= 3


# ---------------------------------------------------------------- downscaling order


def row(rid, running, node, seq):
    return {"replica_id": rid, "running": running, "node_id": node, "seq": seq}


def test_downscaling_stops_pending_first_then_newest_on_emptiest_node():
    replicas = [row("a1", True, "A", 1), row("b1", True, "B", 2), row("a2", True, "A", 3),
                row("b2", True, "B", 4), row("b3", True, "B", 5), row("p", False, None, 6)]
    per_node = {"A": 2, "B": 3}
    assert replicas_to_stop(replicas, 1, per_node) == ["p"]
    assert replicas_to_stop(replicas, 3, per_node) == ["p", "a2", "a1"]
    assert replicas_to_stop(replicas, 4, per_node) == ["p", "a2", "a1", "b3"]
    # one node only: newest first
    single = [row(f"r{i}", True, "A", i) for i in range(4)]
    assert replicas_to_stop(single, 2, {"A": 4}) == ["r3", "r2"]
    # the node count includes other deployments' replicas
    assert replicas_to_stop(replicas, 2, {"A": 9, "B": 3}) == ["p", "b3"]


# ---------------------------------------------------------------- batch forming


def test_form_batch_by_count():
    assert form_batch([1, 2, 3], 5) == (3, False)        # room left: wait for more
    assert form_batch([1, 2, 3, 4, 5, 6], 5) == (5, True)
    assert form_batch([], 5) == (0, False)


def test_form_batch_with_a_size_function():
    def tokens(items):
        return sum(len(s) for s in items)
    assert form_batch(["aaa", "bb", "cccc"], 5, tokens) == (2, True)   # "cccc" waits
    assert form_batch(["aaaaaa", "b"], 5, tokens) == (0, True)         # too big alone
    assert form_batch(["aa", "bbb"], 5, tokens) == (2, True)           # exactly full
    assert form_batch(["a", "b"], 5, tokens) == (2, False)


def test_batch_decorator_checks():
    with pytest.raises(TypeError):
        @serve.batch
        def not_async(items):
            return items
    with pytest.raises(ValueError):
        serve.batch(max_batch_size=0)
