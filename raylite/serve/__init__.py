"""raylite.serve: model serving on raylite actors, with Ray Serve's API.

``from raylite import serve`` runs ordinary Ray Serve code::

    @serve.deployment
    class Hello:
        def __call__(self, request):
            return "hello"

    handle = serve.run(Hello.bind())      # HTTP on 127.0.0.1:8000 too
    handle.remote().result()              # "hello"

A controller actor reconciles replicas (actors) to their targets, runs health checks and
autoscaling; an HTTP proxy actor (uvicorn) routes by longest prefix; handles route by
power of two choices. See README.md ("Serve") for the REST API and the differences from
Ray.
"""

from __future__ import annotations

from raylite.serve import exceptions
from raylite.serve._private.ingress import ingress
from raylite.serve.api import (
    delete,
    get_app_handle,
    get_deployment_handle,
    run,
    shutdown,
    start,
    status,
)
from raylite.serve.batching import batch
from raylite.serve.config import AutoscalingConfig, HTTPOptions
from raylite.serve.context import ReplicaContext, get_replica_context
from raylite.serve.deployment import Application, Deployment, deployment
from raylite.serve.handle import (
    DeploymentHandle,
    DeploymentResponse,
    DeploymentResponseGenerator,
)
from raylite.serve.schema import ApplicationStatus, DeploymentStatus, ServeStatus

__all__ = [
    "deployment", "Deployment", "Application", "run", "start", "status", "delete",
    "shutdown", "get_app_handle", "get_deployment_handle", "get_replica_context",
    "ReplicaContext", "ingress", "batch", "AutoscalingConfig", "HTTPOptions",
    "DeploymentHandle", "DeploymentResponse", "DeploymentResponseGenerator", "ServeStatus",
    "ApplicationStatus", "DeploymentStatus", "exceptions",
]
