"""Autoscaler configuration: node types and the knobs of the loop.

Ray reads a cluster YAML (``available_node_types``, ``max_workers``,
``idle_timeout_minutes``, ``upscaling_speed``); raylite takes the same content as a dict
or as these dataclasses. Differences: node types carry their labels directly, times are
in seconds (``idle_timeout_s``; ``idle_timeout_minutes`` is accepted too), there is no
``node_config`` (the provider decides what a node of a type is) and no head node type
(the nodes ``init()`` started are left alone).
"""

from __future__ import annotations

from dataclasses import dataclass, field

NODE_TYPE_LABEL = "raylite.io/node-type"


@dataclass
class NodeTypeConfig:
    """One kind of node the autoscaler may launch: what it has and how many of it."""

    resources: dict[str, float]
    labels: dict[str, str] = field(default_factory=dict)
    min_workers: int = 0
    max_workers: int = 10
    name: str = ""

    def __post_init__(self):
        self.resources = {str(k): float(v) for k, v in self.resources.items() if v}
        if any(v < 0 for v in self.resources.values()):
            raise ValueError(f"node type {self.name!r}: resources must not be negative")
        if not self.resources:
            raise ValueError(f"node type {self.name!r} has no resources")
        bad = [k for k, v in self.labels.items() if not isinstance(v, str) or not k]
        if bad:
            raise ValueError(f"node type {self.name!r}: labels must map names to strings")
        if not 0 <= self.min_workers <= self.max_workers:
            raise ValueError(f"node type {self.name!r}: need 0 <= min_workers <= max_workers, "
                             f"got {self.min_workers} and {self.max_workers}")

    def node_labels(self) -> dict[str, str]:
        """The labels a node of this type carries (its own plus the node-type label)."""
        return {**self.labels, NODE_TYPE_LABEL: self.name}

    def describe(self) -> dict:
        return {"resources": dict(self.resources), "labels": dict(self.labels),
                "min_workers": self.min_workers, "max_workers": self.max_workers}


@dataclass
class AutoscalerConfig:
    """What the autoscaler may do. ``node_types`` is ordered: among equally good types,
    the earlier one is launched (as in Ray, where the order of the YAML decides).

    ``max_workers`` caps all autoscaled nodes together (None: only the per-type caps).
    ``upscaling_speed``: at most ``max(upscaling_initial_nodes, upscaling_speed x running
    autoscaled nodes)`` nodes may be launching at once (Ray's rule). A launch that has
    not joined the cluster after ``launch_timeout_s`` counts as failed. The loop runs
    every ``interval_s``.
    """

    node_types: dict[str, NodeTypeConfig]
    max_workers: int | None = None
    idle_timeout_s: float = 60.0
    upscaling_speed: float = 1.0
    upscaling_initial_nodes: int = 5
    launch_timeout_s: float = 60.0
    interval_s: float = 1.0

    def __post_init__(self):
        types = {}
        for name, t in self.node_types.items():
            if isinstance(t, dict):
                t = NodeTypeConfig(**{k: v for k, v in t.items() if k != "name"}, name=name)
            elif not t.name:
                t.name = name
            types[name] = t
        if not types:
            raise ValueError("the autoscaler needs at least one node type")
        self.node_types = types
        if self.idle_timeout_s < 0 or self.launch_timeout_s <= 0 or self.interval_s <= 0:
            raise ValueError("idle_timeout_s must be >= 0, launch_timeout_s and interval_s > 0")

    @classmethod
    def from_dict(cls, d: dict | AutoscalerConfig) -> AutoscalerConfig:
        """Build from a dict; Ray's key names (``available_node_types``,
        ``idle_timeout_minutes``) are accepted."""
        if isinstance(d, AutoscalerConfig):
            return d
        d = dict(d)
        if "available_node_types" in d:
            d["node_types"] = d.pop("available_node_types")
        if "idle_timeout_minutes" in d:
            d["idle_timeout_s"] = 60.0 * d.pop("idle_timeout_minutes")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown autoscaler settings {sorted(unknown)}; known: "
                             f"{sorted(cls.__dataclass_fields__)}")
        types = {}
        for name, t in d.get("node_types", {}).items():
            if isinstance(t, dict):
                t = {k: v for k, v in t.items() if k not in ("node_config", "name")}
            types[name] = t
        d["node_types"] = types
        return cls(**d)

    def describe(self) -> dict:
        return {"max_workers": self.max_workers, "idle_timeout_s": self.idle_timeout_s,
                "upscaling_speed": self.upscaling_speed,
                "upscaling_initial_nodes": self.upscaling_initial_nodes,
                "launch_timeout_s": self.launch_timeout_s, "interval_s": self.interval_s}
