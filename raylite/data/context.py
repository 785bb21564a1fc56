"""Execution settings: ``ExecutionOptions``, ``ExecutionResources``, ``DataContext``."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

__all__ = ["ExecutionResources", "ExecutionOptions", "DataContext"]


@dataclass
class ExecutionResources:
    """Resource amounts for execution limits (Ray: ``ray.data.ExecutionResources``)."""

    cpu: float | None = None
    gpu: float | None = None
    object_store_memory: float | None = None

    @classmethod
    def of(cls, value) -> ExecutionResources:
        """Accept an ExecutionResources, a dict (``{"cpu": 2}``, also ``"CPU"`` keys) or
        None (a raylite convenience)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            lower = {k.lower(): v for k, v in value.items()}
            unknown = set(lower) - {"cpu", "gpu", "object_store_memory"}
            if unknown:
                raise ValueError(f"Unknown execution resources {sorted(unknown)}; use cpu, "
                                 "gpu, object_store_memory")
            return cls(**lower)
        raise TypeError(f"Expected ExecutionResources or a dict, got {type(value).__name__}")

    def add(self, other: ExecutionResources) -> ExecutionResources:
        def s(a, b):
            return None if a is None and b is None else (a or 0) + (b or 0)
        return ExecutionResources(s(self.cpu, other.cpu), s(self.gpu, other.gpu),
                                  s(self.object_store_memory, other.object_store_memory))


@dataclass
class ExecutionOptions:
    """How a Dataset executes (Ray: ``ray.data.ExecutionOptions``).

    ``resource_limits`` caps the CPUs (and GPUs) the execution's tasks use at once;
    ``exclude_resources`` is taken out of the cluster's total first (Train puts its
    workers' resources here); ``locality_with_output=True`` runs tasks on the node that
    consumes the output (soft node affinity); ``preserve_order`` yields blocks in input
    order. raylite counts in-flight blocks rather than object store bytes, so
    ``object_store_memory`` limits are accepted and not enforced.
    """

    resource_limits: ExecutionResources = field(default_factory=ExecutionResources)
    exclude_resources: ExecutionResources = field(default_factory=ExecutionResources)
    locality_with_output: bool = False
    preserve_order: bool = False
    verbose_progress: bool = False

    def __post_init__(self):
        self.resource_limits = ExecutionResources.of(self.resource_limits)
        self.exclude_resources = ExecutionResources.of(self.exclude_resources)


class DataContext:
    """Process-wide Data settings (Ray: ``ray.data.DataContext``); each Dataset keeps a
    copy taken when it was created, in ``ds.context``."""

    _current: DataContext | None = None

    def __init__(self):
        self.execution_options = ExecutionOptions()
        self.target_num_blocks = 8

    @classmethod
    def get_current(cls) -> DataContext:
        if cls._current is None:
            cls._current = cls()
        return cls._current

    def copy(self) -> DataContext:
        return copy.deepcopy(self)
