"""What ``serve.status()`` returns (Ray: ``ray.serve.schema.ServeStatus`` and friends),
with raylite's additions for live views: per deployment the target and running replica
counts and the ongoing / queued requests, per application its topology."""

from __future__ import annotations

from dataclasses import dataclass, field


class ApplicationStatus:
    NOT_STARTED = "NOT_STARTED"
    DEPLOYING = "DEPLOYING"
    DEPLOY_FAILED = "DEPLOY_FAILED"
    RUNNING = "RUNNING"
    UNHEALTHY = "UNHEALTHY"
    DELETING = "DELETING"


class DeploymentStatus:
    UPDATING = "UPDATING"
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"
    DEPLOY_FAILED = "DEPLOY_FAILED"
    UPSCALING = "UPSCALING"
    DOWNSCALING = "DOWNSCALING"


@dataclass
class DeploymentStatusOverview:
    status: str
    status_trigger: str
    replica_states: dict
    message: str = ""
    target_num_replicas: int = 0
    running_replicas: int = 0
    ongoing_requests: int = 0
    queued_requests: int = 0


@dataclass
class ApplicationStatusOverview:
    status: str
    message: str
    last_deployed_time_s: float
    deployments: dict[str, DeploymentStatusOverview]
    route_prefix: str | None = None
    ingress_deployment: str | None = None
    external_scaler_enabled: bool = False
    deployment_topology: dict = field(default_factory=dict)


@dataclass
class ServeStatus:
    proxies: dict = field(default_factory=dict)
    applications: dict[str, ApplicationStatusOverview] = field(default_factory=dict)
    target_capacity: float | None = None

    @classmethod
    def from_dict(cls, data: dict) -> ServeStatus:
        apps = {}
        for name, a in data.get("applications", {}).items():
            deps = {dn: DeploymentStatusOverview(**dd) for dn, dd in a["deployments"].items()}
            apps[name] = ApplicationStatusOverview(**dict(a, deployments=deps))
        return cls(proxies=dict(data.get("proxies", {})), applications=apps)
