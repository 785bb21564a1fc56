"""Ray's ``ray.util``: scheduling strategies (placement groups and state come with #4)."""

from __future__ import annotations

from raylite.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

__all__ = ["NodeAffinitySchedulingStrategy", "PlacementGroupSchedulingStrategy"]
