"""raylite: a small, fast, Jupyter-first re-creation of Ray on ZeroMQ.

``import raylite as ray`` runs ordinary Ray Core code: ``ray.init()``, ``@ray.remote``,
``.remote()``, ``ray.get/put/wait``, actors, named actors, cancellation.
"""

from __future__ import annotations

__version__ = "0.1.0"

from raylite import exceptions
from raylite.core.actor import ActorClass, ActorHandle, method
from raylite.core.api import (
    RayliteContext,
    RuntimeContext,
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_actor,
    get_gpu_ids,
    get_runtime_context,
    init,
    is_initialized,
    kill,
    nodes,
    put,
    remote,
    shutdown,
    wait,
)
from raylite.core.object_ref import ObjectRef, ObjectRefGenerator
from raylite.core.remote_function import RemoteFunction

__all__ = [
    "__version__", "exceptions", "init", "shutdown", "is_initialized", "remote", "get", "put",
    "wait", "cancel", "kill", "get_actor", "nodes", "cluster_resources", "available_resources",
    "get_runtime_context", "get_gpu_ids", "method", "ObjectRef", "ObjectRefGenerator",
    "ActorClass", "ActorHandle", "RemoteFunction", "RayliteContext", "RuntimeContext",
]
