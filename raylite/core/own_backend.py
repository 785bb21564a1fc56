"""raylite's own runtime as a backend: the names ``runtime.backend`` must have, bound to
raylite's head, node agents and CoreWorker (the Ray backend,
``raylite.backends.ray_backend``, has the same names).

The public API and the libraries reach these only through the seam
(:mod:`raylite.core.seam`, ``RemoteFunction.remote``, ``ActorClass.remote``,
:mod:`raylite.util.placement_group`, :mod:`raylite.core.runtime_api`); this module adds
no code to the hot path: its task, actor and object functions are the core's own.
"""

from __future__ import annotations

from raylite.core import protocol as P
from raylite.core import runtime, store
from raylite.core.actor import ActorClass
from raylite.core.api import (  # noqa: F401  (the backend's names)
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_actor,
    get_gpu_ids,
    get_runtime_context,
    kill,
    nodes,
    put,
    wait,
)
from raylite.core.lifecycle import init, shutdown  # noqa: F401
from raylite.core.remote_function import RemoteFunction
from raylite.core.runtime_api import EventSubscription, _connected
from raylite.util.placement_group import (
    own_create_placement_group,
    own_get_current_placement_group,
    own_get_placement_group,
    own_placement_group_table,
    own_remove_placement_group,
)

NAME = "raylite"

# placement groups: raylite's head (the public functions check the arguments first)
placement_group = own_create_placement_group
remove_placement_group = own_remove_placement_group
get_placement_group = own_get_placement_group
placement_group_table = own_placement_group_table
get_current_placement_group = own_get_current_placement_group

# ``f.remote()`` / ``Cls.remote()``: the core's own submission, unchanged
submit_task = RemoteFunction._submit
create_actor = ActorClass._create
subscribe_events = EventSubscription


def cluster_state(*sections: str, limit: int | None = None, session=None,
                  timeout: float | None = 30.0) -> dict:
    """The head's state sections in one round trip (``runtime_api.cluster_state``)."""
    body = {"sections": list(sections)}
    if limit:
        body["limit"] = limit
    if session is None:
        return _connected().request_head(P.GET_STATE, body, timeout)
    return session.request_head(P.GET_STATE, body, timeout,
                                abort=lambda: runtime.core is not session)


def cluster_nodes(session=None) -> list[dict]:
    """The head's node records."""
    return _connected(session).request_head(P.CLUSTER_INFO, {})["nodes"]


def owned_objects(session=None) -> list[dict]:
    """The objects this process owns or borrows."""
    return _connected(session).owned_objects()


def stored_objects(session=None) -> list[dict]:
    """The object files in the stores of this host's nodes."""
    return store.stored_objects(_connected(session).session)


def flush_task_events(session=None) -> None:
    """Send this process's task records to the head now."""
    _connected(session).flush_task_events()
