"""raylite: a small, fast, Jupyter-first re-creation of Ray on ZeroMQ.

``import raylite as ray`` runs ordinary Ray Core code: ``ray.init()``, ``@ray.remote``,
``.remote()``, ``ray.get/put/wait``, actors, named actors, cancellation; on raylite's own
runtime or, with ``init(backend="ray")``, on a Ray cluster (:mod:`raylite.core.seam`).

The names below are imported on first use (PEP 562), so the runtime's own processes
(head, node agents), which import ``raylite.core.*`` and so this package first, start
without loading the driver API they never use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_API = "raylite.core.api"
_SEAM = "raylite.core.seam"  # the functions each backend implements (own runtime or Ray)
_WHERE = {
    "init": _SEAM, "shutdown": _SEAM, "is_initialized": _API, "remote": _API, "get": _SEAM,
    "put": _SEAM, "wait": _SEAM, "cancel": _SEAM, "kill": _SEAM, "get_actor": _SEAM,
    "nodes": _SEAM, "cluster_resources": _SEAM, "available_resources": _SEAM,
    "get_runtime_context": _SEAM, "get_gpu_ids": _SEAM, "RayliteContext": _API,
    "RuntimeContext": _API,
    "method": "raylite.core.actor", "ActorClass": "raylite.core.actor",
    "ActorHandle": "raylite.core.actor",
    "ObjectRef": "raylite.core.object_ref", "ObjectRefGenerator": "raylite.core.object_ref",
    "RemoteFunction": "raylite.core.remote_function",
    "timeline": "raylite.util.state",
    "exceptions": None, "util": None, "cluster_utils": None, "serve": None, "widgets": None,
    "autoscaler": None,
}

__all__ = [
    "__version__", "exceptions", "init", "shutdown", "is_initialized", "remote", "get", "put",
    "wait", "cancel", "kill", "get_actor", "nodes", "cluster_resources", "available_resources",
    "get_runtime_context", "get_gpu_ids", "method", "ObjectRef", "ObjectRefGenerator",
    "ActorClass", "ActorHandle", "RemoteFunction", "RayliteContext", "RuntimeContext",
    "util", "cluster_utils", "timeline", "serve", "widgets", "autoscaler",
]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'raylite' has no attribute {name!r}")
    module = _WHERE[name]
    value = importlib.import_module(f"raylite.{name}" if module is None else module)
    if module is not None:
        value = getattr(value, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from raylite import autoscaler, cluster_utils, exceptions, serve, util, widgets
    from raylite.core.actor import ActorClass, ActorHandle, method
    from raylite.core.api import RayliteContext, RuntimeContext, is_initialized, remote
    from raylite.core.object_ref import ObjectRef, ObjectRefGenerator
    from raylite.core.remote_function import RemoteFunction
    from raylite.core.seam import (
        available_resources,
        cancel,
        cluster_resources,
        get,
        get_actor,
        get_gpu_ids,
        get_runtime_context,
        init,
        kill,
        nodes,
        put,
        shutdown,
        wait,
    )
    from raylite.util.state import timeline
