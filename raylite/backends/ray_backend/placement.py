"""Placement groups on Ray: Ray's own (``ray.util.placement_group`` objects, with
``ready()``, ``wait()``, ``bundle_specs``), created from raylite's checked arguments."""

from __future__ import annotations

import ray.util as ray_util

from raylite.backends.ray_backend.session import ensure


def placement_group(bundles: list[dict], strategy: str, name: str, lifetime: str | None,
                    bundle_label_selector: list[dict] | None):
    ensure()
    kwargs = {"bundle_label_selector": bundle_label_selector} if bundle_label_selector else {}
    return ray_util.placement_group(bundles, strategy=strategy, name=name, lifetime=lifetime,
                                    **kwargs)


def remove_placement_group(placement_group) -> None:
    ray_util.remove_placement_group(placement_group)


def get_placement_group(placement_group_name: str):
    ensure()
    return ray_util.get_placement_group(placement_group_name)


def placement_group_table(placement_group=None) -> dict:
    """Ray's table (the same keys raylite's has: ``placement_group_id``, ``name``,
    ``strategy``, ``state``, ``bundles``, ``bundles_to_node_id``)."""
    ensure()
    return ray_util.placement_group_table(placement_group)


def get_current_placement_group():
    return ray_util.get_current_placement_group()
