"""Placement groups (Ray: ``ray.util.placement_group``).

A placement group reserves *bundles* of resources on nodes, all or nothing, with a
strategy: ``PACK`` (as few nodes as possible), ``SPREAD`` (as many as possible), and the
strict forms ``STRICT_PACK`` (one node) and ``STRICT_SPREAD`` (one bundle per node).
Tasks and actors then run inside a bundle with
``scheduling_strategy=PlacementGroupSchedulingStrategy(pg, bundle_index)``.

The head places groups; a group no node can ever hold stays pending with a warning and
an event (never a silent hang). Differences from Ray: bundles on a node that dies are
rescheduled by re-placing the whole group (Ray re-places only the lost bundles);
``_max_cpu_fraction_per_node`` is accepted and ignored.
"""

from __future__ import annotations

import math

from raylite.core import protocol as P
from raylite.core import runtime, scheduler
from raylite.core.object_ref import new_id

__all__ = ["PlacementGroup", "placement_group", "remove_placement_group",
           "get_placement_group", "placement_group_table", "get_current_placement_group",
           "own_create_placement_group", "own_remove_placement_group",
           "own_get_placement_group", "own_placement_group_table",
           "own_get_current_placement_group"]


def _core():
    from raylite.core.lifecycle import require_core

    return require_core()


class PlacementGroupID:
    """The id of a placement group (``pg.id.hex()`` as in Ray)."""

    def __init__(self, hex_id: str):
        self._hex = hex_id

    def hex(self) -> str:
        return self._hex

    def __eq__(self, other) -> bool:
        return isinstance(other, PlacementGroupID) and other._hex == self._hex

    def __hash__(self) -> int:
        return hash(self._hex)

    def __repr__(self) -> str:
        return f"PlacementGroupID({self._hex})"


class PlacementGroup:
    """A handle to a placement group; it can be passed to tasks and actors."""

    def __init__(self, pg_id: str, bundles: list | None = None, strategy: str | None = None,
                 name: str = ""):
        self.id = PlacementGroupID(pg_id)
        self._bundles = bundles
        self._strategy = strategy
        self._name = name

    def _info(self, wait: bool = False, timeout: float | None = 30.0) -> dict | None:
        body = {"pg_id": self.id.hex(), "wait": wait}
        return _core().request_head(P.GET_PG, body, timeout=timeout)

    @property
    def bundle_specs(self) -> list[dict]:
        """The resources of each bundle, in order."""
        if self._bundles is None:
            info = self._info()
            self._bundles = [b["resources"] for b in info["bundles"]] if info else []
        return [dict(b) for b in self._bundles]

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def ready(self):
        """An ObjectRef that resolves (to this group) once all bundles are reserved, as
        in Ray: ``raylite.get(pg.ready())``. It fails if the group is removed first."""
        return _ready_check.options(scheduling_strategy=_strategy(self, -1, False)).remote(self)

    def wait(self, timeout_seconds: float = 30) -> bool:
        """Block until the group is placed (True) or ``timeout_seconds`` pass (False)."""
        try:
            info = self._info(wait=True, timeout=timeout_seconds)
        except Exception as e:  # the head's "did not answer" after the timeout
            if "did not answer" in str(e):
                return False
            raise
        return bool(info) and info["state"] == "CREATED"

    def __reduce__(self):
        return PlacementGroup, (self.id.hex(), self._bundles, self._strategy, self._name)

    def __eq__(self, other) -> bool:
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"PlacementGroup(id={self.id.hex()}, strategy={self._strategy}, " \
               f"bundles={self._bundles})"

    def _repr_html_(self) -> str:
        from raylite.util.state import _pg_html

        info = self._info()
        return _pg_html(info) if info else f"<code>{self!r}</code> (unknown)"


def _placement_group_ready(obj):
    return obj


_ready_fn = None


class _LazyReady:
    """The tiny task ``ready()`` runs inside the group (made on first use)."""

    def options(self, **options):
        global _ready_fn
        if _ready_fn is None:
            from raylite.core.api import remote

            _ready_fn = remote(num_cpus=0, max_retries=0)(_placement_group_ready)
        return _ready_fn.options(**options)


_ready_check = _LazyReady()


def _strategy(pg: PlacementGroup, index: int, capture: bool):
    from raylite.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return PlacementGroupSchedulingStrategy(pg, index, capture)


def _validate(bundles, strategy: str, bundle_label_selector) -> None:
    if strategy not in scheduler.PG_STRATEGIES:
        raise ValueError(f"Invalid placement group strategy {strategy!r}; use one of "
                         f"{', '.join(scheduler.PG_STRATEGIES)}")
    if not isinstance(bundles, (list, tuple)) or not bundles:
        raise ValueError("placement_group needs a non-empty list of bundles, e.g. "
                         "[{'CPU': 1}, {'CPU': 1}]")
    for i, b in enumerate(bundles):
        if not isinstance(b, dict) or not b:
            raise ValueError(f"Bundle {i} must be a non-empty dict of resource -> amount, "
                             f"got {b!r}")
        for k, v in b.items():
            if not isinstance(k, str) or not isinstance(v, (int, float)) or v < 0 or \
                    math.isnan(v):
                raise ValueError(f"Bundle {i}: {k!r}: {v!r} must map a resource name to a "
                                 "non-negative number")
        if all(v == 0 for v in b.values()):
            raise ValueError(f"Bundle {i} ({b!r}) reserves nothing: every amount is 0")
    if bundle_label_selector is not None:
        if len(bundle_label_selector) != len(bundles):
            raise ValueError(f"bundle_label_selector has {len(bundle_label_selector)} entries "
                             f"but there are {len(bundles)} bundles; give one per bundle")
        for sel in bundle_label_selector:
            scheduler.parse_selector(sel)


def placement_group(bundles: list[dict], strategy: str = "PACK", name: str = "",
                    lifetime: str | None = None, _max_cpu_fraction_per_node=None,
                    bundle_label_selector: list[dict] | None = None):
    """Reserve ``bundles`` with ``strategy``; returns at once (use ``.ready()`` or
    ``.wait()``). ``lifetime="detached"`` keeps the group after its creator exits;
    otherwise it is removed with its creator (as Ray does with the job). On the Ray
    backend this is Ray's placement group (a ``ray.util.PlacementGroup``)."""
    _validate(bundles, strategy, bundle_label_selector)
    if lifetime not in (None, "detached"):
        raise ValueError("lifetime must be None or 'detached'")
    return runtime.backend.placement_group(bundles, strategy, name, lifetime,
                                           bundle_label_selector)


def remove_placement_group(placement_group) -> None:
    """Remove the group: its reservations are freed, and the tasks and actors running in
    it are killed (as in Ray)."""
    runtime.backend.remove_placement_group(placement_group)


def get_placement_group(placement_group_name: str):
    """The live placement group named ``placement_group_name``; ValueError if none."""
    return runtime.backend.get_placement_group(placement_group_name)


def placement_group_table(placement_group=None) -> dict:
    """Ray's table: ``{pg_id: {placement_group_id, name, strategy, state, bundles,
    bundles_to_node_id, ...}}``, or one group's entry when ``placement_group`` is given."""
    return runtime.backend.placement_group_table(placement_group)


def get_current_placement_group():
    """The group the current task or actor runs in, or None (also in the driver)."""
    return runtime.backend.get_current_placement_group()


# ----------------------------------------------------------- raylite's own runtime
# (what ``runtime.backend`` holds for it: raylite.core.own_backend)
def own_create_placement_group(bundles: list[dict], strategy: str, name: str,
                               lifetime: str | None,
                               bundle_label_selector: list[dict] | None) -> PlacementGroup:
    """Ask raylite's head to place a group (arguments already checked)."""
    core = _core()
    pg_id = new_id().hex()
    spec = {"pg_id": pg_id, "bundles": [dict(b) for b in bundles], "strategy": strategy,
            "name": name, "lifetime": lifetime, "owner": core.addr,
            "bundle_label_selector": [dict(s or {}) for s in bundle_label_selector]
            if bundle_label_selector else None}
    core.request_head(P.CREATE_PG, spec)
    return PlacementGroup(pg_id, spec["bundles"], strategy, name)


def own_remove_placement_group(placement_group: PlacementGroup) -> None:
    _core().request_head(P.REMOVE_PG, {"pg_id": placement_group.id.hex()})


def own_get_placement_group(placement_group_name: str) -> PlacementGroup:
    info = _core().request_head(P.GET_PG, {"name": placement_group_name})
    if not info:
        raise ValueError(f"Failed to look up placement group with name "
                         f"{placement_group_name!r}: no such live placement group.")
    return PlacementGroup(info["placement_group_id"],
                          [b["resources"] for b in info["bundles"]], info["strategy"],
                          info["name"])


def own_placement_group_table(placement_group: PlacementGroup | None = None) -> dict:
    from raylite.util.state import get_state

    groups = get_state("placement_groups")["placement_groups"]
    table = {}
    for info in groups:
        entry = dict(info)
        entry["bundles"] = {b["bundle_index"]: b["resources"] for b in info["bundles"]}
        entry["bundles_to_node_id"] = {b["bundle_index"]: b["node_id"] for b in info["bundles"]}
        entry["bundle_label_selector"] = [b["label_selector"] for b in info["bundles"]]
        table[info["placement_group_id"]] = entry
    if placement_group is not None:
        return table.get(placement_group.id.hex(), {})
    return table


def own_get_current_placement_group() -> PlacementGroup | None:
    pg = runtime.task_context.placement_group
    return PlacementGroup(pg[0]) if pg else None
