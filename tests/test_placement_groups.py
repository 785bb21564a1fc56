"""Placement groups: the pure placement function, then groups on labelled virtual nodes."""

from __future__ import annotations

import pytest

import raylite
from raylite.core import scheduler
from raylite.core.scheduler import NodeView
from raylite.exceptions import ActorDiedError
from raylite.testing import wait_for_condition
from raylite.util import (
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from raylite.util import state as st
from raylite.util.scheduling_strategies import PlacementGroupSchedulingStrategy as InPG

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------- pure placement
def _nodes(*specs):
    return [NodeView(f"n{i}", dict(res), dict(res), labels) for i, (res, labels)
            in enumerate(specs)]


def _place(nodes, bundles, strategy, selectors=None, use_total=False):
    parsed = [scheduler.parse_selector(s) for s in (selectors or [None] * len(bundles))]
    return scheduler.place_bundles(nodes, bundles, strategy, parsed, use_total)


def test_pack_fills_one_node_before_the_next():
    nodes = _nodes(({"CPU": 4}, {}), ({"CPU": 4}, {}))
    where = _place(nodes, [{"CPU": 1}] * 3, "PACK")
    assert len(set(where)) == 1


def test_pack_overflows_to_a_second_node():
    nodes = _nodes(({"CPU": 2}, {}), ({"CPU": 2}, {}))
    where = _place(nodes, [{"CPU": 1}] * 3, "PACK")
    assert sorted(where.count(n) for n in set(where)) == [1, 2]


def test_spread_uses_distinct_nodes_then_reuses():
    nodes = _nodes(({"CPU": 4}, {}), ({"CPU": 4}, {}))
    assert len(set(_place(nodes, [{"CPU": 1}] * 2, "SPREAD"))) == 2
    where = _place(nodes, [{"CPU": 1}] * 3, "SPREAD")
    assert len(where) == 3 and sorted([where.count("n0"), where.count("n1")]) == [1, 2]


def test_strict_spread_fails_without_enough_nodes():
    nodes = _nodes(({"CPU": 4}, {}), ({"CPU": 4}, {}))
    assert _place(nodes, [{"CPU": 1}] * 3, "STRICT_SPREAD") is None
    assert len(set(_place(nodes, [{"CPU": 1}] * 2, "STRICT_SPREAD"))) == 2


def test_strict_pack_needs_one_node_for_everything():
    nodes = _nodes(({"CPU": 2}, {}), ({"CPU": 2}, {}))
    assert _place(nodes, [{"CPU": 1}] * 3, "STRICT_PACK") is None
    assert len(set(_place(nodes, [{"CPU": 1}] * 2, "STRICT_PACK"))) == 1


def test_bundle_label_selectors_choose_nodes():
    nodes = _nodes(({"CPU": 2}, {"zone": "a"}), ({"CPU": 2}, {"zone": "b"}),
                   ({"CPU": 2}, {"zone": "c"}))
    where = _place(nodes, [{"CPU": 1}, {"CPU": 1}], "PACK",
                   [{"zone": "c"}, {"zone": "!in(a,c)"}])
    assert where == ["n2", "n1"]


def test_all_or_nothing_and_feasibility_on_totals():
    nodes = _nodes(({"CPU": 2}, {}),)
    nodes[0].available = {"CPU": 0.0}
    assert _place(nodes, [{"CPU": 1}], "PACK") is None
    assert _place(nodes, [{"CPU": 1}], "PACK", use_total=True) == ["n0"]
    assert _place(nodes, [{"CPU": 3}], "PACK", use_total=True) is None


def test_most_constrained_bundle_placed_first():
    # the GPU bundle must get the only GPU node even though it is listed last
    nodes = _nodes(({"CPU": 1}, {}), ({"CPU": 1, "GPU": 1}, {}))
    where = _place(nodes, [{"CPU": 1}, {"CPU": 1, "GPU": 1}], "STRICT_SPREAD")
    assert where == ["n0", "n1"]


# ---------------------------------------------------------------- on a cluster
@pytest.fixture(scope="module")
def three_nodes():
    ctx = raylite.init(nodes=[{"num_cpus": 2, "labels": {"zone": "a"}},
                              {"num_cpus": 2, "labels": {"zone": "b"}},
                              {"num_cpus": 2, "labels": {"zone": "c"}, "resources": {"ssd": 1}}])
    try:
        yield ctx
    finally:
        raylite.shutdown()


def _zone_of(node_id):
    return next(n["Labels"]["zone"] for n in raylite.nodes() if n["NodeID"] == node_id)


@raylite.remote(num_cpus=1)
def where_am_i():
    return raylite.get_runtime_context().get_node_id()


@raylite.remote(num_cpus=0)
def current_pg():
    pg = get_current_placement_group()
    return pg.id.hex() if pg else None


@raylite.remote(num_cpus=0)
def parent_of_child():
    return raylite.get(current_pg.remote())


def test_strict_spread_bundles_on_distinct_nodes(three_nodes):
    pg = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
    try:
        assert raylite.get(pg.ready(), timeout=20) == pg
        got = raylite.get([where_am_i.options(scheduling_strategy=InPG(pg, i)).remote()
                           for i in range(3)], timeout=20)
        table = placement_group_table(pg)
        assert table["state"] == "CREATED"
        assert got == [table["bundles_to_node_id"][i] for i in range(3)]
        assert len(set(got)) == 3
    finally:
        remove_placement_group(pg)


def test_strict_pack_and_reserved_resources(three_nodes):
    before = raylite.available_resources()["CPU"]
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")
    assert pg.wait(20)
    nodes = set(placement_group_table(pg)["bundles_to_node_id"].values())
    assert len(nodes) == 1
    wait_for_condition(lambda: raylite.available_resources()["CPU"] == before - 2)
    remove_placement_group(pg)
    wait_for_condition(lambda: raylite.available_resources()["CPU"] == before)
    assert placement_group_table(pg)["state"] == "REMOVED"


def test_bundle_label_selector_and_custom_resource(three_nodes):
    pg = placement_group([{"CPU": 1}, {"CPU": 1, "ssd": 1}], strategy="SPREAD",
                         bundle_label_selector=[{"zone": "in(a,b)"}, {}])
    try:
        assert pg.wait(20)
        b2n = placement_group_table(pg)["bundles_to_node_id"]
        assert _zone_of(b2n[0]) in ("a", "b")
        assert _zone_of(b2n[1]) == "c"  # the only node with "ssd"
    finally:
        remove_placement_group(pg)


def test_tasks_in_a_full_bundle_wait_their_turn(three_nodes):
    pg = placement_group([{"CPU": 1}], strategy="PACK")
    try:
        assert pg.wait(20)
        node = placement_group_table(pg)["bundles_to_node_id"][0]
        refs = [where_am_i.options(scheduling_strategy=InPG(pg, 0)).remote() for _ in range(4)]
        assert raylite.get(refs, timeout=20) == [node] * 4
    finally:
        remove_placement_group(pg)


def test_infeasible_group_stays_pending_with_warning_and_event(three_nodes, caplog):
    with st.subscribe(["placement_group"]) as events:
        pg = placement_group([{"CPU": 1}] * 4, strategy="STRICT_SPREAD", name="too-wide")
        try:
            assert pg.wait(0.3) is False
            assert placement_group_table(pg)["state"] == "PENDING"

            def flagged():
                while True:
                    topic, body = events.get(timeout=10)
                    if body["placement_group_id"] == pg.id.hex() and body["infeasible"]:
                        return True
            assert flagged()
            assert st.list_placement_groups(filters=[("name", "=", "too-wide")])[0][
                "infeasible"]
        finally:
            remove_placement_group(pg)


def test_remove_kills_actors_and_fails_later_tasks(three_nodes):
    pg = placement_group([{"CPU": 1}], strategy="PACK")
    assert pg.wait(20)

    @raylite.remote(num_cpus=1)
    class Pinned:
        def ping(self):
            return "pong"

    a = Pinned.options(scheduling_strategy=InPG(pg, 0)).remote()
    assert raylite.get(a.ping.remote(), timeout=20) == "pong"
    workers = st.list_workers(filters=[("placement_group_id", "=", pg.id.hex())])
    assert len(workers) == 1 and workers[0]["state"] == "actor"
    remove_placement_group(pg)
    wait_for_condition(lambda: st.list_actors(
        filters=[("actor_id", "=", a._ray_actor_id)])[0]["state"] == "DEAD")
    with pytest.raises(ActorDiedError, match="placement group"):
        raylite.get(a.ping.remote(), timeout=20)
    with pytest.raises(ValueError, match="placement group .* was removed"):
        raylite.get(where_am_i.options(scheduling_strategy=InPG(pg, 0)).remote(), timeout=20)


def test_capture_child_tasks(three_nodes):
    pg = placement_group([{"CPU": 1}], strategy="PACK")
    try:
        assert pg.wait(20)
        captured = parent_of_child.options(scheduling_strategy=InPG(pg, 0, True)).remote()
        assert raylite.get(captured, timeout=20) == pg.id.hex()
        free = parent_of_child.options(scheduling_strategy=InPG(pg, 0, False)).remote()
        assert raylite.get(free, timeout=20) is None
        assert get_current_placement_group() is None  # the driver is in no group
    finally:
        remove_placement_group(pg)


def test_named_group_lookup_and_duplicate(three_nodes):
    pg = placement_group([{"CPU": 1}], name="shared")
    try:
        assert get_placement_group("shared") == pg
        with pytest.raises(ValueError, match="already exists"):
            placement_group([{"CPU": 1}], name="shared")
    finally:
        remove_placement_group(pg)
    with pytest.raises(ValueError, match="no such live placement group"):
        get_placement_group("shared")


def test_bundle_index_out_of_range_is_an_error(three_nodes):
    pg = placement_group([{"CPU": 1}])
    try:
        assert pg.wait(20)
        with pytest.raises(ValueError, match="bundle_index=3"):
            raylite.get(where_am_i.options(scheduling_strategy=InPG(pg, 3)).remote(), timeout=20)
    finally:
        remove_placement_group(pg)


@pytest.mark.parametrize("kwargs, match", [
    ({"bundles": [{"CPU": 1}], "strategy": "TIGHT"}, "Invalid placement group strategy"),
    ({"bundles": []}, "non-empty list of bundles"),
    ({"bundles": [{"CPU": 0}]}, "reserves nothing"),
    ({"bundles": [{"CPU": -1}]}, "non-negative"),
    ({"bundles": [{"CPU": 1}], "bundle_label_selector": [{}, {}]}, "one per bundle"),
    ({"bundles": [{"CPU": 1}], "bundle_label_selector": [{"zone": "in()"}]}, "Malformed"),
])
def test_invalid_groups_are_clear_errors(three_nodes, kwargs, match):
    with pytest.raises(ValueError, match=match):
        placement_group(**kwargs)
