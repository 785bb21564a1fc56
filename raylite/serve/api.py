"""Serve's public functions: run, start, status, delete, shutdown and handle lookup."""

from __future__ import annotations

import time

import raylite
from raylite.serve import context
from raylite.serve._private import client
from raylite.serve.config import HTTPOptions
from raylite.serve.context import CONTROLLER_NAME, SERVE_NAMESPACE
from raylite.serve.deployment import Application
from raylite.serve.exceptions import RayServeException
from raylite.serve.handle import DeploymentHandle
from raylite.serve.schema import ServeStatus

_POLL_S = 0.02


def start(http_options: HTTPOptions | dict | None = None, **_ignored) -> None:
    """Start Serve: the controller and the HTTP proxy (127.0.0.1:8000 by default).

    ``serve.run`` calls it when needed. Differs from Ray: one proxy, on the head's
    machine (``proxy_location`` is accepted and ignored); the REST API shares its port.
    """
    opts = HTTPOptions.coerce(http_options)
    ctrl = client.get_controller(start=start_controller)
    raylite.get(ctrl.start_proxy.remote(opts.to_dict()))


def start_controller():
    """Create Serve's controller (a detached named actor; an existing one is returned),
    handing it its collaborators: the replica and proxy actors, the config builder."""
    from raylite.serve._private.build import build_from_config
    from raylite.serve._private.controller import ServeController
    from raylite.serve._private.proxy import ProxyActor
    from raylite.serve._private.replica import ReplicaActor

    return raylite.remote(ServeController).options(
        name=CONTROLLER_NAME, namespace=SERVE_NAMESPACE, lifetime="detached", num_cpus=0,
        max_concurrency=10000, get_if_exists=True).remote(ReplicaActor, ProxyActor,
                                                          build_from_config)


def run(target: Application, *, name: str = "default", route_prefix: str | None = "/",
        blocking: bool = False, external_scaler_enabled: bool = False,
        _timeout_s: float | None = None, **_ignored) -> DeploymentHandle:
    """Deploy an application and return a handle to its ingress deployment.

    Returns once every replica is running (raises RuntimeError if the app fails to
    deploy), so it suits a notebook cell; ``blocking=True`` then waits until Ctrl-C, as
    in Ray. Redeploying an application by name updates it in place: replicas whose code
    or options changed are replaced (new ones start before old ones stop), a new
    ``user_config`` reaches running replicas through ``reconfigure``.
    """
    from raylite.serve._private.build import build_app

    spec = build_app(target, name, route_prefix, external_scaler_enabled)
    start()
    ctrl = client.get_controller()
    raylite.get(ctrl.deploy_application.remote(spec))
    _wait_for_app(ctrl, name, _timeout_s)
    handle = DeploymentHandle(spec["ingress"], name)
    if blocking:
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return handle


def _wait_for_app(ctrl, name: str, timeout_s: float | None) -> None:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        info = raylite.get(ctrl.get_app_info.remote(name))
        if info is None:
            raise RayServeException(f"Application {name!r} was deleted while deploying")
        if info["status"] == "RUNNING" and info.get("settled", True):
            return  # (a redeploy: once no replica of the old code is left serving)
        if info["status"] == "DEPLOY_FAILED":
            raise RuntimeError(f"Application {name!r} failed to deploy:\n{info['message']}")
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"Application {name!r} is not running after {timeout_s}s "
                               f"(status {info['status']})")
        time.sleep(_POLL_S)


def status() -> ServeStatus:
    """Every application's and deployment's status; raylite adds target/running
    replicas, ongoing/queued requests and the topology (for live views)."""
    ctrl = client.get_controller()
    if ctrl is None:
        return ServeStatus()
    return ServeStatus.from_dict(raylite.get(ctrl.get_status.remote()))


def delete(name: str, _blocking: bool = True) -> None:
    """Delete an application: its replicas drain and stop, its route goes."""
    ctrl = client.get_controller()
    if ctrl is None:
        return
    raylite.get(ctrl.delete_application.remote(name))
    while _blocking and name in raylite.get(ctrl.list_apps_all.remote()):
        time.sleep(_POLL_S)


def shutdown() -> None:
    """Delete every application, stop the proxy and the controller."""
    ctrl = client.get_controller()
    if ctrl is None:
        return
    try:
        raylite.get(ctrl.graceful_shutdown.remote())
        raylite.kill(ctrl)
    except Exception:
        pass
    client.forget_controller()


def get_app_handle(name: str) -> DeploymentHandle:
    """A handle to an application's ingress deployment."""
    ctrl = client.get_controller()
    info = None if ctrl is None else raylite.get(ctrl.get_app_info.remote(name))
    if info is None:
        raise RayServeException(f"Application {name!r} does not exist.")
    return DeploymentHandle(info["ingress"], name)


def get_deployment_handle(deployment_name: str, app_name: str | None = None,
                          **_ignored) -> DeploymentHandle:
    """A handle to a deployment; ``app_name`` defaults to the calling replica's app
    (else "default")."""
    if app_name is None:
        me = context._current_replica()
        app_name = me.app_name if me is not None else "default"
    return DeploymentHandle(deployment_name, app_name)
