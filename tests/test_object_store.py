"""The object store across nodes: lost objects rebuilt from lineage, or ObjectLostError."""

from __future__ import annotations

import numpy as np
import pytest

import raylite as ray
from raylite.cluster_utils import Cluster
from raylite.exceptions import ObjectLostError
from raylite.testing import wait_for_condition
from raylite.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def two_node_cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    doomed = cluster.add_node(num_cpus=1)
    cluster.connect()
    try:
        yield cluster, doomed
    finally:
        cluster.shutdown()


def _kill_and_wait(cluster, node) -> None:
    cluster.remove_node(node)
    wait_for_condition(lambda: not next(n for n in ray.nodes()
                                        if n["NodeID"] == node.node_id)["Alive"], timeout=15)


@ray.remote
def make_array(seed: int):
    return np.random.default_rng(seed).random(500_000), ray.get_runtime_context().get_node_id()


def test_object_on_dead_node_is_rebuilt_from_lineage(two_node_cluster):
    cluster, doomed = two_node_cluster
    on_doomed = NodeAffinitySchedulingStrategy(doomed.node_id, soft=True)
    arr_ref, node_ref = make_array.options(num_returns=2, max_retries=2,
                                           scheduling_strategy=on_doomed).remote(7)
    first = ray.get(arr_ref, timeout=20)
    assert ray.get(node_ref) == doomed.node_id
    _kill_and_wait(cluster, doomed)
    rebuilt = ray.get(arr_ref, timeout=30)
    assert np.array_equal(rebuilt, first)


def test_object_on_dead_node_without_retries_is_lost(two_node_cluster):
    cluster, doomed = two_node_cluster
    on_doomed = NodeAffinitySchedulingStrategy(doomed.node_id, soft=True)
    arr_ref, _ = make_array.options(num_returns=2, max_retries=0,
                                    scheduling_strategy=on_doomed).remote(3)
    ray.get(arr_ref, timeout=20)
    _kill_and_wait(cluster, doomed)
    with pytest.raises(ObjectLostError, match="lost"):
        ray.get(arr_ref, timeout=10)
