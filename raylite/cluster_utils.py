"""A cluster of virtual nodes for tests and notebooks (Ray: ``ray.cluster_utils.Cluster``).

Each node is a real agent process with its own resources, labels and store; removing a
node kills its agent (and so its workers), as losing a machine would.
"""

from __future__ import annotations

from raylite.core import runtime_api
from raylite.testing import wait_for_condition


class NodeHandle:
    def __init__(self, node_id: str, resources: dict, labels: dict):
        self.node_id = node_id
        self.unique_id = node_id
        self.resources = resources
        self.labels = labels

    def __repr__(self) -> str:
        return f"NodeHandle({self.node_id})"


class Cluster:
    """Start a head (and optionally a first node); add and remove nodes at will.

    ``init(address=cluster.address)`` connects a driver. Unlike Ray, the head node is not
    a node by itself: ``initialize_head=True`` adds a first node with ``head_node_args``.
    """

    def __init__(self, initialize_head: bool = False, connect: bool = False,
                 head_node_args: dict | None = None):
        self._local = runtime_api.start_cluster()
        self._nodes: list[NodeHandle] = []
        self._connected = False
        self.head_node = None
        if initialize_head:
            self.head_node = self.add_node(**(head_node_args or {}))
        if connect:
            self.connect()

    @property
    def address(self) -> str:
        return self._local.address.replace("tcp://", "")

    @property
    def local_cluster(self) -> runtime_api.LocalCluster:
        """Its processes (a raylite extension): what an autoscaler's LocalNodeProvider
        starts nodes in."""
        return self._local

    @property
    def token(self) -> str:
        """The cluster's secret (a raylite extension: every raylite cluster has one)."""
        return self._local.token

    def connect(self, **init_kwargs):
        """Connect this process as a driver, with the cluster's token."""
        import raylite

        init_kwargs.setdefault("_token", self.token)
        ctx = raylite.init(address=self.address, **init_kwargs)
        self._connected = True
        return ctx

    def add_node(self, num_cpus: float = 1, num_gpus: float = 0, resources: dict | None = None,
                 labels: dict | None = None, wait: bool = True, **_ignored) -> NodeHandle:
        node_id = self._local.add_node(num_cpus, num_gpus, resources, labels,
                                       warm=int(min(max(num_cpus, 1), 2)))
        handle = NodeHandle(node_id, {"CPU": num_cpus, "GPU": num_gpus, **(resources or {})},
                            labels or {})
        self._nodes.append(handle)
        if wait:
            self.wait_for_nodes()
        return handle

    def remove_node(self, node: NodeHandle, allow_graceful: bool = False) -> None:
        """Kill the node's agent (SIGKILL) and so its workers, and drop its object store
        (a lost machine loses its memory); the head notices by missed heartbeats, tasks
        are retried elsewhere and lost objects rebuilt from lineage."""
        self._local.kill_node(node.node_id, drop_store=True)
        self._nodes.remove(node)

    def list_all_nodes(self) -> list[NodeHandle]:
        return list(self._nodes)

    def _alive_ids(self) -> set[str]:
        return {n["node_id"] for n in runtime_api.query_nodes(self._local.address, self.token)
                if n["alive"]}

    def wait_for_nodes(self, timeout: float = 30.0) -> None:
        """Wait until the head sees exactly the nodes added and not removed as alive."""
        want = {n.node_id for n in self._nodes}
        wait_for_condition(lambda: self._alive_ids() == want, timeout,
                           message=f"nodes {sorted(want)} registered")

    def shutdown(self) -> None:
        import raylite

        if self._connected:
            raylite.shutdown()
            self._connected = False
        self._local.stop()
