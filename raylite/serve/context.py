"""What a replica knows about itself (``serve.get_replica_context()``), set when the
replica starts; and the process's link to the controller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from raylite.serve.exceptions import RayServeException

CONTROLLER_NAME = "SERVE_CONTROLLER"
SERVE_NAMESPACE = "serve"


@dataclass
class ReplicaContext:
    """The replica a piece of code runs in (Ray: ``ray.serve.context.ReplicaContext``)."""

    app_name: str
    deployment: str
    replica_id: str
    servable_object: Any = None

    @property
    def replica_tag(self) -> str:
        return self.replica_id


_replica_context: ReplicaContext | None = None


def _set_replica_context(ctx: ReplicaContext | None) -> None:
    global _replica_context
    _replica_context = ctx


def _current_replica() -> ReplicaContext | None:
    return _replica_context


def get_replica_context() -> ReplicaContext:
    """The context of the replica this code runs in; raises outside a replica."""
    if _replica_context is None:
        raise RayServeException("get_replica_context() may only be called from inside a "
                                "Serve replica (a deployment's code).")
    return _replica_context
