"""This process's link to the Serve controller: find (or start) it, and keep the routers
of the handles used here."""

from __future__ import annotations

import threading

import raylite
from raylite.serve import context
from raylite.serve._private import router as router_mod
from raylite.serve.context import CONTROLLER_NAME, SERVE_NAMESPACE

_lock = threading.Lock()
_state = {"controller": None, "cluster": None}
_edges: set = set()


def _cluster_key() -> str:
    return raylite.get_runtime_context().get_node_id()


def _reset_if_new_cluster() -> None:
    """Routers and the controller handle belong to one cluster: a driver that shut its
    cluster down and started another must not reuse them."""
    key = _cluster_key()
    if _state["cluster"] != key:
        router_mod.reset_routers()
        _state["controller"] = None
        _state["cluster"] = key
        _edges.clear()


def get_controller(start=None):
    """The controller's handle; None if Serve is not running, unless ``start`` is given:
    then ``start()`` makes the controller (``serve.api.start_controller``)."""
    if not raylite.is_initialized():
        if start is None:
            return None
        raylite.init()
    with _lock:
        _reset_if_new_cluster()
        if _state["controller"] is not None:
            return _state["controller"]
        try:
            ctrl = raylite.get_actor(CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        except Exception:
            if start is None:
                return None
            ctrl = start()
        _state["controller"] = ctrl
        return ctrl


def forget_controller() -> None:
    with _lock:
        router_mod.reset_routers()
        _state["controller"] = None
        _edges.clear()


def router_for(app: str, deployment: str):
    ctrl = _state["controller"] if context._current_replica() is not None else None
    if ctrl is None:
        ctrl = get_controller()
    if ctrl is None:
        from raylite.serve.exceptions import RayServeException

        raise RayServeException("Serve is not running: call serve.run() first.")
    return router_mod.get_router(ctrl, app, deployment)


def set_controller(ctrl) -> None:
    """Inside a replica or the proxy: the controller that started us."""
    _state["controller"] = ctrl
    _state["cluster"] = _cluster_key()


def report_edge(app: str, deployment: str) -> None:
    """Record that the current replica's deployment holds a handle to another."""
    me = context._current_replica()
    ctrl = _state["controller"]
    if me is None or ctrl is None:
        return
    edge = (me.app_name, me.deployment, app, deployment)
    if edge in _edges:
        return
    _edges.add(edge)
    try:
        ctrl.record_handle_edge.remote(*edge)
    except Exception:
        pass
