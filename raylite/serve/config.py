"""Configuration objects: ``AutoscalingConfig``, ``HTTPOptions`` and the per-deployment
``DeploymentConfig`` (Ray: ``ray.serve.config``). Plain dataclasses, validated on creation,
so a bad option fails where the user wrote it, not inside the controller."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

AGGREGATIONS = ("mean", "max", "min")


@dataclass
class AutoscalingConfig:
    """How a deployment scales with load (Ray's names and defaults).

    The metric is the number of ongoing requests at the replicas plus the requests queued
    at handles, aggregated over ``look_back_period_s`` with ``aggregation_function``. The
    decision is ``ceil(running * (1 + (total / (target * running) - 1) * factor))``, clamped
    to ``[min_replicas, max_replicas]`` and applied once the direction held for
    ``upscale_delay_s`` / ``downscale_delay_s``. From zero replicas, a queued request scales
    up at once. raylite samples the metric every control-loop tick (50 ms);
    ``metrics_interval_s`` is accepted for compatibility and caps how often replicas push.
    """

    min_replicas: int = 1
    max_replicas: int = 1
    initial_replicas: int | None = None
    target_ongoing_requests: float = 2.0
    look_back_period_s: float = 30.0
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    upscaling_factor: float | None = None
    downscaling_factor: float | None = None
    aggregation_function: str = "mean"
    metrics_interval_s: float = 10.0

    def __post_init__(self):
        if self.min_replicas < 0:
            raise ValueError("min_replicas must be >= 0")
        if self.max_replicas < max(1, self.min_replicas):
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= 1 and >= "
                             f"min_replicas ({self.min_replicas})")
        if self.initial_replicas is not None and not (
                self.min_replicas <= self.initial_replicas <= self.max_replicas):
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        if self.target_ongoing_requests <= 0:
            raise ValueError("target_ongoing_requests must be > 0")
        for name in ("look_back_period_s", "metrics_interval_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("upscale_delay_s", "downscale_delay_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("upscaling_factor", "downscaling_factor"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.aggregation_function not in AGGREGATIONS:
            raise ValueError(f"aggregation_function must be one of {AGGREGATIONS}, got "
                             f"{self.aggregation_function!r}")

    @property
    def up_factor(self) -> float:
        return 1.0 if self.upscaling_factor is None else self.upscaling_factor

    @property
    def down_factor(self) -> float:
        return 1.0 if self.downscaling_factor is None else self.downscaling_factor

    @classmethod
    def coerce(cls, value) -> AutoscalingConfig | None:
        if value is None or isinstance(value, AutoscalingConfig):
            return value
        if isinstance(value, dict):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = set(value) - known
            if unknown:
                raise ValueError(f"Unknown autoscaling_config keys: {sorted(unknown)}")
            return cls(**value)
        raise TypeError(f"autoscaling_config must be a dict or AutoscalingConfig, got {value!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class HTTPOptions:
    """Where the HTTP proxy listens (Ray: ``HTTPOptions``). raylite runs one proxy, on the
    head's machine; ``request_timeout_s`` answers 408 when a request takes longer."""

    host: str = "127.0.0.1"
    port: int = 8000
    root_path: str = ""
    request_timeout_s: float | None = None
    keep_alive_timeout_s: float = 5.0

    @classmethod
    def coerce(cls, value) -> HTTPOptions:
        if value is None:
            return cls()
        if isinstance(value, HTTPOptions):
            return value
        if isinstance(value, dict):
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in value.items() if k in known})
        raise TypeError(f"http_options must be a dict or HTTPOptions, got {value!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


ACTOR_OPTIONS = {"num_cpus", "num_gpus", "memory", "resources", "accelerator_type",
                 "runtime_env", "label_selector", "object_store_memory", "scheduling_strategy"}


@dataclass
class DeploymentConfig:
    """The options of one deployment, as the controller keeps them."""

    num_replicas: int | None = 1
    max_ongoing_requests: int = 5
    max_queued_requests: int = -1
    user_config: Any = None
    autoscaling_config: AutoscalingConfig | None = None
    graceful_shutdown_wait_loop_s: float = 2.0
    graceful_shutdown_timeout_s: float = 20.0
    health_check_period_s: float = 10.0
    health_check_timeout_s: float = 30.0
    ray_actor_options: dict = field(default_factory=dict)
    placement_group_bundles: list | None = None
    placement_group_strategy: str = "PACK"
    max_replicas_per_node: int | None = None

    def __post_init__(self):
        if self.num_replicas == "auto":
            self.num_replicas = None
            base = {"min_replicas": 1, "max_replicas": 100}
            auto = self.autoscaling_config
            if isinstance(auto, AutoscalingConfig):
                auto = auto.to_dict()
            self.autoscaling_config = dict(base, **(auto or {}))
        self.autoscaling_config = AutoscalingConfig.coerce(self.autoscaling_config)
        if self.autoscaling_config is not None and self.num_replicas not in (None, 1):
            raise ValueError("Set either num_replicas or autoscaling_config, not both "
                             "(num_replicas='auto' turns autoscaling on with defaults).")
        if self.autoscaling_config is not None:
            self.num_replicas = None
        elif self.num_replicas is None:
            self.num_replicas = 1
        if self.num_replicas is not None and (not isinstance(self.num_replicas, int)
                                              or self.num_replicas < 0):
            raise ValueError(f"num_replicas must be an int >= 0 or 'auto', got "
                             f"{self.num_replicas!r}")
        if not isinstance(self.max_ongoing_requests, int) or self.max_ongoing_requests < 1:
            raise ValueError("max_ongoing_requests must be an int >= 1")
        if not isinstance(self.max_queued_requests, int) or (
                self.max_queued_requests < 0 and self.max_queued_requests != -1):
            raise ValueError("max_queued_requests must be -1 (no limit) or an int >= 0")
        for name in ("graceful_shutdown_wait_loop_s", "graceful_shutdown_timeout_s",
                     "health_check_period_s", "health_check_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        opts = dict(self.ray_actor_options or {})
        unknown = set(opts) - ACTOR_OPTIONS
        if unknown:
            raise ValueError(f"ray_actor_options {sorted(unknown)} are not supported; valid: "
                             f"{sorted(ACTOR_OPTIONS)}")
        opts.setdefault("num_cpus", 1)  # Ray: a replica reserves one CPU unless told
        self.ray_actor_options = opts

    def initial_target(self) -> int:
        auto = self.autoscaling_config
        if auto is None:
            return self.num_replicas
        return auto.initial_replicas if auto.initial_replicas is not None else auto.min_replicas

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["autoscaling_config"] = (self.autoscaling_config.to_dict()
                                   if self.autoscaling_config else None)
        return d
