"""Scheduling strategies (Ray: ``ray.util.scheduling_strategies``)."""

from __future__ import annotations


class NodeAffinitySchedulingStrategy:
    """Run on ``node_id``; with ``soft=True`` fall back to other nodes when it cannot
    (full or dead), else wait for it (and fail if it is dead, as Ray)."""

    def __init__(self, node_id: str, soft: bool = False, _spill_on_unavailable: bool = False,
                 _fail_on_unavailable: bool = False):
        self.node_id = node_id
        self.soft = soft

    def _to_wire(self):
        return ("node", self.node_id, self.soft)

    def __repr__(self) -> str:
        return f"NodeAffinitySchedulingStrategy({self.node_id!r}, soft={self.soft})"


class PlacementGroupSchedulingStrategy:
    """Run inside a placement group's bundle (placement groups arrive with issue #4)."""

    def __init__(self, placement_group, placement_group_bundle_index: int = -1,
                 placement_group_capture_child_tasks=None):
        self.placement_group = placement_group
        self.placement_group_bundle_index = placement_group_bundle_index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks

    def _to_wire(self):
        raise NotImplementedError("placement groups are not implemented yet (issue #4)")
