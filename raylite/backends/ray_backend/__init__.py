"""The Ray backend: raylite's public core API on a Ray 2.53 cluster.

``raylite.init(backend="ray", address=...)`` or ``RAYLITE_BACKEND=ray`` selects it. This
package is the only place raylite imports Ray; it has the names of
:mod:`raylite.core.own_backend` (what ``runtime.backend`` must provide): tasks, actors
and objects (:mod:`.tasks`), the connection (:mod:`.session`), placement groups
(:mod:`.placement`), and the state API and events read from Ray's (:mod:`.state`).
"""

from __future__ import annotations

try:
    import ray  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("The Ray backend needs Ray 2.53: pip install 'raylite[ray]'") from e

from raylite.backends.ray_backend.placement import (  # noqa: F401
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from raylite.backends.ray_backend.session import (  # noqa: F401
    get_runtime_context,
    init,
    shutdown,
)
from raylite.backends.ray_backend.state import (  # noqa: F401
    cluster_nodes,
    cluster_state,
    flush_task_events,
    owned_objects,
    stored_objects,
    subscribe_events,
)
from raylite.backends.ray_backend.tasks import (  # noqa: F401
    available_resources,
    cancel,
    cluster_resources,
    create_actor,
    get,
    get_actor,
    get_gpu_ids,
    kill,
    nodes,
    put,
    submit_task,
    wait,
)

NAME = "ray"
