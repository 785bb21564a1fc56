"""Ray's ``ray.util``: scheduling strategies, placement groups, the state API, and the
libraries many Ray notebooks use: ``ActorPool``, ``queue.Queue``, ``multiprocessing.Pool``."""

from __future__ import annotations

from raylite.util.actor_pool import ActorPool
from raylite.util.backend import backend_name, own_runtime_only
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

__all__ = ["ActorPool", "backend_name", "own_runtime_only",
           "NodeAffinitySchedulingStrategy", "PlacementGroupSchedulingStrategy",
           "PlacementGroup", "placement_group", "remove_placement_group",
           "get_placement_group", "placement_group_table", "get_current_placement_group",
           "state", "queue", "multiprocessing"]


def __getattr__(name: str):
    if name in ("state", "queue", "multiprocessing"):
        import importlib

        return importlib.import_module(f"raylite.util.{name}")
    raise AttributeError(f"module 'raylite.util' has no attribute {name!r}")
