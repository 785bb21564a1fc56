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
    """Run inside a placement group: in bundle ``placement_group_bundle_index``, or in
    any bundle with room when it is -1. With ``placement_group_capture_child_tasks=True``
    the tasks and actors this one starts (without a strategy of their own) run in the
    same group."""

    def __init__(self, placement_group, placement_group_bundle_index: int = -1,
                 placement_group_capture_child_tasks=None):
        if placement_group is None or not hasattr(placement_group, "id"):
            raise ValueError("PlacementGroupSchedulingStrategy needs a PlacementGroup, got "
                             f"{placement_group!r}")
        if not isinstance(placement_group_bundle_index, int) or \
                placement_group_bundle_index < -1:
            raise ValueError("placement_group_bundle_index must be -1 (any bundle) or a "
                             f"bundle index, got {placement_group_bundle_index!r}")
        self.placement_group = placement_group
        self.placement_group_bundle_index = placement_group_bundle_index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks

    def _to_wire(self):
        return ("pg", self.placement_group.id.hex(), self.placement_group_bundle_index,
                bool(self.placement_group_capture_child_tasks))

    def __repr__(self) -> str:
        return (f"PlacementGroupSchedulingStrategy({self.placement_group.id.hex()}, "
                f"bundle_index={self.placement_group_bundle_index}, "
                f"capture_child_tasks={self.placement_group_capture_child_tasks})")
