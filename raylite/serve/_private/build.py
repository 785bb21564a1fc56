"""Turning an Application (a graph of bound deployments) into what the controller deploys:
one spec per deployment, with its code and constructor arguments pickled once, here,
and the handles each holds (the topology's edges from construction)."""

from __future__ import annotations

import hashlib
import importlib

import cloudpickle

from raylite.serve.deployment import Application, Deployment
from raylite.serve.handle import DeploymentHandle


def build_app(app: Application, name: str, route_prefix: str | None,
              external_scaler_enabled: bool = False) -> dict:
    """The controller's spec of an application."""
    if isinstance(app, Deployment):
        app = app.bind()
    if not isinstance(app, Application):
        raise TypeError(f"serve.run expects an Application (Deployment.bind(...)), got "
                        f"{type(app).__name__}")
    if route_prefix is not None:
        if not route_prefix.startswith("/"):
            raise ValueError(f"route_prefix must start with '/', got {route_prefix!r}")
        if route_prefix != "/" and route_prefix.endswith("/"):
            raise ValueError(f"route_prefix must not end with '/', got {route_prefix!r}")
    names: dict[int, str] = {}
    specs: dict[str, dict] = {}

    def visit(node: Application) -> str:
        if id(node) in names:
            return names[id(node)]
        dep = node._deployment
        dname, i = dep.name, 1
        while dname in specs:
            dname, i = f"{dep.name}_{i}", i + 1
        names[id(node)] = dname
        specs[dname] = {}  # reserve the name before visiting children
        edges: list[str] = []

        def to_handle(child_app: Application) -> DeploymentHandle:
            child = visit(child_app)
            if child not in edges:
                edges.append(child)
            return DeploymentHandle(child, name)
        args = _map_apps(list(node._args), to_handle)
        kwargs = _map_apps(dict(node._kwargs), to_handle)
        code = cloudpickle.dumps(dep.func_or_class)
        init = cloudpickle.dumps((tuple(args), kwargs))
        cfg = dep._config
        specs[dname] = {
            "name": dname, "callable": code, "init_args": init,
            "config": cfg.to_dict(), "edges": edges,
            "version": dep.version or _digest(code, init, repr(cfg.ray_actor_options),
                                              repr(cfg.placement_group_bundles)),
        }
        return dname

    ingress = visit(app)
    for spec in specs.values():
        auto = spec["config"]["autoscaling_config"]
        if external_scaler_enabled and auto is not None:
            raise ValueError(
                f"Application {name!r} sets external_scaler_enabled=True but deployment "
                f"{spec['name']!r} has an autoscaling_config: an external scaler and Serve's "
                "autoscaler cannot both set replica counts. Drop one of them.")
    return {"name": name, "route_prefix": route_prefix, "ingress": ingress,
            "external_scaler_enabled": bool(external_scaler_enabled),
            "deployments": list(specs.values())}


def _digest(*parts) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
    return h.hexdigest()[:16]


def import_attr(path: str):
    """``"module:attr"`` or ``"module.attr"`` -> the object."""
    if ":" in path:
        mod, _, attr = path.partition(":")
    else:
        mod, _, attr = path.rpartition(".")
    if not mod or not attr:
        raise ValueError(f"import_path must look like 'module:app', got {path!r}")
    obj = importlib.import_module(mod)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


APP_KEYS = {"name", "route_prefix", "import_path", "args", "deployments", "runtime_env",
            "external_scaler_enabled", "logging_config"}


def build_from_config(app_config: dict) -> dict:
    """Build one application of a declarative config (run as a task, so user imports
    happen outside the controller)."""
    if not isinstance(app_config, dict) or "import_path" not in app_config:
        raise ValueError("Each application needs an 'import_path' ('module:app').")
    unknown = set(app_config) - APP_KEYS
    if unknown:
        raise ValueError(f"Unknown application keys {sorted(unknown)}")
    target = import_attr(app_config["import_path"])
    if callable(target) and not isinstance(target, (Application, Deployment)):
        target = target(app_config.get("args") or {})
    if isinstance(target, Deployment):
        target = target.bind()
    if not isinstance(target, Application):
        raise ValueError(f"{app_config['import_path']} is not an Application")
    overrides = {d["name"]: d for d in app_config.get("deployments") or ()}
    if overrides:
        target = _override(target, overrides)
    return build_app(target, app_config.get("name") or "default",
                     app_config.get("route_prefix", "/"),
                     app_config.get("external_scaler_enabled", False))


def _override(app: Application, overrides: dict) -> Application:
    """A copy of the graph with deployment options from the config applied."""
    seen: dict[int, Application] = {}

    def copy(v: Application) -> Application:
        if id(v) not in seen:
            dep = v._deployment
            opts = {k: x for k, x in overrides.get(dep.name, {}).items() if k != "name"}
            new_dep = dep.options(**opts) if opts else dep
            seen[id(v)] = Application(new_dep, _map_apps(list(v._args), copy),
                                      _map_apps(dict(v._kwargs), copy))
        return seen[id(v)]
    return copy(app)


def _map_apps(value, fn):
    """``value`` with every Application in it (inside lists, tuples, dicts) replaced by
    ``fn(app)``."""
    if isinstance(value, Application):
        return fn(value)
    if isinstance(value, list):
        return [_map_apps(x, fn) for x in value]
    if isinstance(value, tuple):
        return tuple(_map_apps(x, fn) for x in value)
    if isinstance(value, dict):
        return {k: _map_apps(x, fn) for k, x in value.items()}
    return value
