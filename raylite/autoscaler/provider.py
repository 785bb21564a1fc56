"""Node providers: what the autoscaler calls to get and give back machines.

:class:`NodeProvider` is the interface (Ray: ``ray.autoscaler.node_provider.NodeProvider``,
reduced to what the autoscaler needs): ``launch`` asks for nodes of a type and returns
their ids at once (the nodes come up later, or never), ``launch_status`` says how a launch
is going, ``terminate`` gives a node back, ``non_terminated_nodes`` lists what is held.
A node's id is the id it registers with the head under, so the monitor can tell when a
launched node has joined.

:class:`LocalNodeProvider` starts each node as a real node-agent process on this machine
(a *virtual node*, through the driver's ``LocalCluster``), after ``launch_delay_s``. For
demos and tests it can be told, at any time, that a type is **unavailable** (its launches
never come up, so they time out, as when a cloud has no capacity), **failing** (its
launches fail with an error), or **slow** (a per-type launch delay).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from raylite.autoscaler.config import NodeTypeConfig
from raylite.core import runtime_api

log = logging.getLogger(__name__)


class NodeProvider:
    """The interface a node provider implements."""

    def launch(self, node_type: NodeTypeConfig, count: int) -> list[str]:
        """Ask for ``count`` nodes of ``node_type``; return their node ids now. Raise
        when the request is refused outright (the launch counts as failed)."""
        raise NotImplementedError

    def launch_status(self, node_id: str) -> tuple[str, str]:
        """``(status, message)``: status is ``"pending"`` (not started yet),
        ``"started"`` (the machine is up; it joins the cluster soon), ``"failed"``, or
        ``"terminated"``."""
        raise NotImplementedError

    def terminate(self, node_id: str) -> None:
        """Give the node back (it may still be coming up)."""
        raise NotImplementedError

    def non_terminated_nodes(self) -> dict[str, str]:
        """node id -> node type of every node launched and not terminated."""
        raise NotImplementedError

    def shutdown(self) -> None:
        """Stop what is in flight and wait for terminated nodes to be gone."""


class LocalNodeProvider(NodeProvider):
    """Virtual nodes as real processes of the driver's local cluster.

    ``cluster`` is a ``LocalCluster`` (``add_node``, ``node_process``, ``stop_node``,
    ``forget_node``) or a ``raylite.cluster_utils.Cluster``; by default the cluster
    ``raylite.init()`` started. ``warm_workers`` idle workers are forked on
    each new node (fewer make launches cheaper on a small machine).
    """

    def __init__(self, cluster=None, *, launch_delay_s: float = 0.0, warm_workers: int = 1):
        self._cluster = cluster
        self.launch_delay_s = launch_delay_s
        self.warm_workers = warm_workers
        self._delays: dict[str, float] = {}
        self._modes: dict[str, str] = {}  # node type -> "unavailable" | "failing"
        self._nodes: dict[str, dict] = {}  # node id -> {type, status, message, timer}
        self._stopping: dict[str, tuple] = {}  # node id -> (process, kill deadline)
        self._lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------- demo and test knobs
    def set_unavailable(self, node_type: str, unavailable: bool = True) -> None:
        """Launches of ``node_type`` never come up (they time out) until cleared."""
        self._set_mode(node_type, "unavailable" if unavailable else None)

    def set_failing(self, node_type: str, failing: bool = True) -> None:
        """Launches of ``node_type`` fail (after the launch delay) until cleared."""
        self._set_mode(node_type, "failing" if failing else None)

    def set_launch_delay(self, seconds: float, node_type: str | None = None) -> None:
        """The delay before a launched node starts, for one type or as the default."""
        if node_type is None:
            self.launch_delay_s = seconds
        else:
            self._delays[node_type] = seconds

    def _set_mode(self, node_type: str, mode: str | None) -> None:
        if mode is None:
            self._modes.pop(node_type, None)
        else:
            self._modes[node_type] = mode

    def describe(self) -> dict:
        return {"kind": "local", "launch_delay_s": self.launch_delay_s,
                "launch_delays": dict(self._delays), "modes": dict(self._modes)}

    # ------------------------------------------------------------- provider interface
    @property
    def cluster(self):
        if self._cluster is None:
            self._cluster = runtime_api.local_cluster()
            if self._cluster is None:
                raise RuntimeError("LocalNodeProvider needs a cluster this process started "
                                   "(raylite.init() with no address, or pass cluster=)")
        return getattr(self._cluster, "local_cluster", self._cluster)  # cluster_utils

    def launch(self, node_type: NodeTypeConfig, count: int) -> list[str]:
        cluster = self.cluster
        delay = self._delays.get(node_type.name, self.launch_delay_s)
        ids = []
        for _ in range(count):
            node_id = f"{node_type.name}-{uuid.uuid4().hex[:6]}"
            rec = {"type": node_type, "status": "pending", "message": "", "timer": None}
            with self._lock:
                if self._closed:
                    raise RuntimeError("the provider is shut down")
                self._nodes[node_id] = rec
            if delay > 0:
                rec["timer"] = threading.Timer(delay, self._start, (cluster, node_id))
                rec["timer"].daemon = True
                rec["timer"].start()
            else:
                self._start(cluster, node_id)
            ids.append(node_id)
        return ids

    def _start(self, cluster, node_id: str) -> None:
        with self._lock:
            rec = self._nodes.get(node_id)
            if rec is None or rec["status"] != "pending" or self._closed:
                return
            t: NodeTypeConfig = rec["type"]
            mode = self._modes.get(t.name)
            if mode == "unavailable":
                rec["message"] = f"no {t.name} capacity (simulated): the node never comes up"
                return
            if mode == "failing":
                rec["status"] = "failed"
                rec["message"] = f"launching {t.name} failed (simulated)"
                return
            res = dict(t.resources)
            try:
                cluster.add_node(num_cpus=res.pop("CPU", 0), num_gpus=res.pop("GPU", 0),
                                 resources=res, labels=t.node_labels(), node_id=node_id,
                                 warm=self.warm_workers)
                rec["status"] = "started"
            except Exception as e:  # e.g. out of file descriptors: a failed launch
                rec["status"] = "failed"
                rec["message"] = f"starting the node agent failed: {e!r}"

    def launch_status(self, node_id: str) -> tuple[str, str]:
        self._reap()
        with self._lock:
            rec = self._nodes.get(node_id)
            if rec is None:
                return "terminated", "unknown node"
            if rec["status"] == "started":
                proc = self.cluster.node_process(node_id)
                if proc is not None and proc.poll() is not None:
                    rec["status"] = "failed"
                    rec["message"] = f"the node agent exited with code {proc.returncode}"
            return rec["status"], rec["message"]

    def terminate(self, node_id: str) -> None:
        with self._lock:
            rec = self._nodes.pop(node_id, None)
            if rec is not None and rec["timer"] is not None:
                rec["timer"].cancel()
            if node_id not in self._stopping:
                proc = self.cluster.stop_node(node_id)  # its workers stop, its store goes
                if proc is not None:
                    self._stopping[node_id] = (proc, time.monotonic() + 3.0)
        self._reap()

    def _reap(self) -> None:
        """Forget stopped agents (killing those that overstayed); until then they stay in
        the cluster's process table, so ``shutdown()`` of the cluster stops them too."""
        with self._lock:
            for node_id, (proc, deadline) in list(self._stopping.items()):
                if proc.poll() is None and time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                if proc.poll() is not None:
                    del self._stopping[node_id]
                    self.cluster.forget_node(node_id, proc)

    def non_terminated_nodes(self) -> dict[str, str]:
        with self._lock:
            return {nid: r["type"].name for nid, r in self._nodes.items()
                    if r["status"] != "failed"}

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            timers = [r["timer"] for r in self._nodes.values() if r["timer"] is not None]
        for t in timers:
            t.cancel()
        deadline = time.monotonic() + 3.5
        while self._stopping and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.02)
