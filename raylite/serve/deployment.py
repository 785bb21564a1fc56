"""``@serve.deployment``, ``Deployment.bind()`` and ``Application`` (Ray's names).

A Deployment is a class or function plus its options; ``.bind(*args)`` makes an
Application: the deployment with its constructor arguments. An Application passed as
an argument to another ``.bind()`` becomes a ``DeploymentHandle`` in the replica that
receives it, which is how applications are composed.
"""

from __future__ import annotations

import inspect

from raylite.serve.config import DeploymentConfig

_UNSET = object()

_OPTION_NAMES = (
    "num_replicas", "ray_actor_options", "user_config", "max_ongoing_requests",
    "max_queued_requests", "autoscaling_config", "graceful_shutdown_wait_loop_s",
    "graceful_shutdown_timeout_s", "health_check_period_s", "health_check_timeout_s",
    "placement_group_bundles", "placement_group_strategy", "max_replicas_per_node",
)


class Application:
    """A bound deployment: what ``serve.run`` deploys (Ray: ``Application``)."""

    def __init__(self, deployment: Deployment, args: tuple | list, kwargs: dict):
        self._deployment = deployment
        self._args = tuple(args)
        self._kwargs = dict(kwargs)

    def __repr__(self) -> str:
        return f"Application({self._deployment.name})"


class Deployment:
    """A class or function to serve, with its options (Ray: ``Deployment``)."""

    def __init__(self, func_or_class, name: str, config: DeploymentConfig,
                 version: str | None = None, _user_options: dict | None = None):
        self.func_or_class = func_or_class
        self._name = name
        self._config = config
        self._version = version
        self._user_options = dict(_user_options or {})

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str | None:
        return self._version

    @property
    def num_replicas(self):
        return self._config.num_replicas

    @property
    def user_config(self):
        return self._config.user_config

    @property
    def max_ongoing_requests(self) -> int:
        return self._config.max_ongoing_requests

    @property
    def max_queued_requests(self) -> int:
        return self._config.max_queued_requests

    @property
    def autoscaling_config(self):
        return self._config.autoscaling_config

    @property
    def ray_actor_options(self) -> dict:
        return self._config.ray_actor_options

    def bind(self, *args, **kwargs) -> Application:
        """The deployment with constructor arguments, ready for ``serve.run``."""
        return Application(self, args, kwargs)

    def options(self, *, name=_UNSET, version=_UNSET, _func_or_class=_UNSET,
                **options) -> Deployment:
        """A copy with some options changed (any option of ``@serve.deployment``)."""
        merged = dict(self._user_options)
        for k, v in options.items():
            if k not in _OPTION_NAMES and k != "route_prefix":
                raise TypeError(f"Unknown deployment option {k!r}")
            merged[k] = v
        if "autoscaling_config" in options and "num_replicas" not in options and \
                merged.get("num_replicas") not in (None, "auto"):
            merged.pop("num_replicas")
        if options.get("num_replicas") not in (None, "auto") and \
                "autoscaling_config" not in options:
            merged.pop("autoscaling_config", None)
        target = self.func_or_class if _func_or_class is _UNSET else _func_or_class
        return _make(target, self._name if name is _UNSET else name,
                     self._version if version is _UNSET else version, merged)

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"Deployment {self._name!r} cannot be called directly: use "
                           f"{self._name}.bind(...) and serve.run(), then a handle.")

    def __repr__(self) -> str:
        return f"Deployment(name={self._name!r})"


def _make(func_or_class, name: str, version, options: dict) -> Deployment:
    opts = {k: v for k, v in options.items() if k != "route_prefix"}
    config = DeploymentConfig(**opts)
    return Deployment(func_or_class, name, config, version, options)


def deployment(_func_or_class=None, name: str | None = None, version: str | None = None,
               num_replicas=_UNSET, route_prefix=_UNSET, ray_actor_options=_UNSET,
               user_config=_UNSET, max_ongoing_requests=_UNSET, max_queued_requests=_UNSET,
               autoscaling_config=_UNSET, graceful_shutdown_wait_loop_s=_UNSET,
               graceful_shutdown_timeout_s=_UNSET, health_check_period_s=_UNSET,
               health_check_timeout_s=_UNSET, placement_group_bundles=_UNSET,
               placement_group_strategy=_UNSET, max_replicas_per_node=_UNSET,
               **_ignored):
    """Make a class or function a Serve deployment (Ray: ``@serve.deployment``).

    Options and defaults as Ray's: ``num_replicas=1`` (or ``"auto"``),
    ``max_ongoing_requests=5``, ``max_queued_requests=-1``, ``health_check_period_s=10``,
    ``health_check_timeout_s=30``, ``graceful_shutdown_timeout_s=20``, a replica reserves
    ``num_cpus=1`` unless ``ray_actor_options`` says otherwise. Differs from Ray:
    ``max_replicas_per_node`` is accepted but not enforced; ``logging_config`` and
    ``request_router_config`` are ignored.
    """
    given = {k: v for k, v in dict(
        num_replicas=num_replicas, ray_actor_options=ray_actor_options,
        user_config=user_config, max_ongoing_requests=max_ongoing_requests,
        max_queued_requests=max_queued_requests, autoscaling_config=autoscaling_config,
        graceful_shutdown_wait_loop_s=graceful_shutdown_wait_loop_s,
        graceful_shutdown_timeout_s=graceful_shutdown_timeout_s,
        health_check_period_s=health_check_period_s,
        health_check_timeout_s=health_check_timeout_s,
        placement_group_bundles=placement_group_bundles,
        placement_group_strategy=placement_group_strategy,
        max_replicas_per_node=max_replicas_per_node).items() if v is not _UNSET}

    def wrap(target):
        if not (inspect.isclass(target) or inspect.isfunction(target)):
            raise TypeError(f"@serve.deployment decorates a class or function, got {target!r}")
        return _make(target, name or target.__name__, version, given)

    if _func_or_class is not None:
        return wrap(_func_or_class)
    return wrap
