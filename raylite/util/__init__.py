"""Ray's ``ray.util``: scheduling strategies, placement groups, the state API."""

from __future__ import annotations

from raylite.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from raylite.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

__all__ = ["NodeAffinitySchedulingStrategy", "PlacementGroupSchedulingStrategy",
           "PlacementGroup", "placement_group", "remove_placement_group",
           "get_placement_group", "placement_group_table", "get_current_placement_group",
           "state"]


def __getattr__(name: str):
    if name == "state":
        import importlib

        return importlib.import_module("raylite.util.state")
    raise AttributeError(f"module 'raylite.util' has no attribute {name!r}")
