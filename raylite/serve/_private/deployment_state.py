"""The controller's record of one deployment: its replicas and how they are brought to
the target — started, health-checked, updated to a new version, and stopped gracefully
in the downscaling order of ``policy.replicas_to_stop``.

Everything here runs on the controller's event loop; actor calls are awaited there.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time

import raylite
from raylite.serve._private.autoscaling import AutoscalingPolicy
from raylite.serve._private.policy import replicas_to_stop
from raylite.serve.config import AutoscalingConfig

log = logging.getLogger(__name__)

STARTING, RUNNING, STOPPING = "STARTING", "RUNNING", "STOPPING"
MAX_START_FAILURES = 3
QUEUED_METRIC_TTL_S = 5.0
_seq = itertools.count()


class Replica:
    __slots__ = ("replica_id", "actor", "state", "node_id", "seq", "version", "start_time",
                 "pid", "actor_id", "checking", "last_check", "task", "pg")

    def __init__(self, version: str):
        self.replica_id = os.urandom(4).hex()
        self.actor = None
        self.state = STARTING
        self.node_id = None
        self.seq = next(_seq)
        self.version = version
        self.start_time = time.time()
        self.pid = None
        self.actor_id = None
        self.checking = False
        self.last_check = time.monotonic()
        self.task = None
        self.pg = None


class DeploymentState:
    def __init__(self, ctrl, app: str, spec: dict):
        self.ctrl = ctrl
        self.app = app
        self.name = spec["name"]
        self.replicas: list[Replica] = []
        self.ongoing: dict[str, int] = {}
        self.queued: dict[str, tuple[int, float]] = {}
        self.status, self.message, self.trigger = "UPDATING", "", "CONFIG_UPDATE_STARTED"
        self.failures = 0
        self.deleting = False
        self.policy = None
        self.apply(spec, first=True)

    # ------------------------------------------------------------------ spec
    def apply(self, spec: dict, first: bool = False) -> None:
        """Take a new spec: a new version replaces replicas; a new user_config is pushed
        to the running ones; a new num_replicas changes the target."""
        cfg = spec["config"]
        old = None if first else self.spec
        self.spec = spec
        self.config = cfg
        self.version = spec["version"]
        auto = cfg["autoscaling_config"]
        if auto is not None:
            if self.policy is None or old is None or \
                    old["config"]["autoscaling_config"] != auto:
                self.policy = AutoscalingPolicy(AutoscalingConfig(**auto))
        else:
            self.policy = None
        if first or old["config"]["num_replicas"] != cfg["num_replicas"] or \
                old["config"]["autoscaling_config"] != auto:
            self.target = _initial_target(cfg)
        if not first:
            self.failures = 0
            if self.status == "DEPLOY_FAILED":
                self.status = "UPDATING"
            self.trigger = "CONFIG_UPDATE_STARTED"
            # lighter updates reach the running replicas in place
            if old["config"]["user_config"] != cfg["user_config"]:
                for r in self.up_to_date():
                    r.actor.reconfigure.remote(cfg["user_config"])
            if old["config"]["max_ongoing_requests"] != cfg["max_ongoing_requests"]:
                for r in self.up_to_date():
                    r.actor.set_max_ongoing_requests.remote(cfg["max_ongoing_requests"])
            if any(old["config"][k] != cfg[k] for k in
                   ("max_ongoing_requests", "max_queued_requests")):
                self.publish()

    # ------------------------------------------------------------------ reconcile
    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.state != STOPPING]

    def running(self) -> list[Replica]:
        return [r for r in self.replicas if r.state == RUNNING]

    def up_to_date(self) -> list[Replica]:
        """Running replicas of the current version."""
        return [r for r in self.replicas if r.state == RUNNING and r.version == self.version]

    def reconcile(self) -> None:
        target = 0 if self.deleting else self.target
        live = self.live()
        current = [r for r in live if r.version == self.version]
        outdated = [r for r in live if r.version != self.version]
        if self.status != "DEPLOY_FAILED":
            for _ in range(target - len(current)):
                self.start_replica()
        if len(current) > target:
            self.stop_some(current, len(current) - target)
        if outdated:
            ready = sum(1 for r in current if r.state == RUNNING)
            extra = ready + len(outdated) - target
            if ready >= target or self.status == "DEPLOY_FAILED":
                extra = len(outdated)
            if extra > 0:
                self.stop_some(outdated, extra)
        self.update_status()

    def stop_some(self, candidates: list[Replica], count: int) -> None:
        per_node = self.ctrl.replicas_per_node()
        rows = [{"replica_id": r.replica_id, "running": r.state == RUNNING,
                 "node_id": r.node_id, "seq": r.seq} for r in candidates]
        chosen = set(replicas_to_stop(rows, count, per_node))
        for r in candidates:
            if r.replica_id in chosen:
                self.stop_replica(r)

    def update_status(self) -> None:
        if self.status == "DEPLOY_FAILED":
            return
        running = self.up_to_date()
        live = self.live()
        converged = len(running) == self.target and len(live) == self.target
        if converged:
            self.status, self.trigger = "HEALTHY", (
                "CONFIG_UPDATE_COMPLETED" if self.trigger == "CONFIG_UPDATE_STARTED"
                else self.trigger if self.trigger.endswith("_COMPLETED")
                else self.trigger.replace("STARTED", "COMPLETED"))
            self.message = ""
        elif self.trigger in ("AUTOSCALE_UP", "AUTOSCALE_DOWN", "EXTERNAL_SCALE"):
            self.status = "UPSCALING" if self.target > len(running) else "DOWNSCALING"
        elif self.status != "UNHEALTHY":
            self.status = "UPDATING"

    def set_target(self, n: int, trigger: str) -> None:
        if n != self.target:
            self.target = n
            self.trigger = trigger
            self.update_status()

    # ------------------------------------------------------------------ replicas
    def start_replica(self) -> None:
        r = Replica(self.version)
        self.replicas.append(r)
        r.task = self.ctrl.spawn(self._start(r))

    async def _start(self, r: Replica) -> None:
        cfg = self.config
        opts = dict(cfg["ray_actor_options"])
        opts.pop("object_store_memory", None)
        try:
            if cfg.get("placement_group_bundles"):
                r.pg = await self._placement_group(cfg)
                from raylite.util.scheduling_strategies import (
                    PlacementGroupSchedulingStrategy,
                )
                opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    r.pg, placement_group_bundle_index=0,
                    placement_group_capture_child_tasks=True)
            r.actor = self.ctrl.replica_cls.options(
                max_concurrency=cfg["max_ongoing_requests"] + 100, **opts).remote(
                self.app, self.name, r.replica_id,
                {"callable": self.spec["callable"], "init_args": self.spec["init_args"]},
                dict(cfg), self.ctrl.self_handle)
            info = await r.actor.initialize.remote()
        except Exception as e:
            if r.state == STOPPING:
                return
            self._start_failed(r, e)
            return
        if r.state == STOPPING:
            return
        r.state = RUNNING
        r.node_id, r.pid, r.actor_id = info["node_id"], info["pid"], info["actor_id"]
        r.last_check = time.monotonic()
        self.failures = 0
        self.publish()
        self.reconcile()

    async def _placement_group(self, cfg):
        from raylite.util import placement_group

        pg = placement_group(cfg["placement_group_bundles"],
                             strategy=cfg.get("placement_group_strategy") or "PACK")
        await pg.ready()
        return pg

    def _start_failed(self, r: Replica, e: BaseException) -> None:
        log.warning("replica %s of %s/%s failed to start: %s", r.replica_id, self.app,
                    self.name, e)
        self._drop(r)
        self.failures += 1
        if self.failures >= MAX_START_FAILURES:
            self.status, self.trigger = "DEPLOY_FAILED", "REPLICA_STARTUP_FAILED"
            self.message = (f"The deployment failed to start {self.failures} times in a row."
                            f" Last error:\n{e}")
            self.publish()

    def stop_replica(self, r: Replica, graceful: bool = True) -> None:
        was_running = r.state == RUNNING
        r.state = STOPPING
        if was_running:
            self.publish()
        if r.task is not None and not r.task.done() and not was_running:
            r.task.cancel()
        self.ctrl.spawn(self._stop(r, graceful and was_running))

    async def _stop(self, r: Replica, graceful: bool) -> None:
        timeout = float(self.config["graceful_shutdown_timeout_s"])
        if graceful and r.actor is not None:
            try:
                await asyncio.wait_for(_ref(r.actor.prepare_for_shutdown.remote(timeout)),
                                       timeout + 5)
            except Exception:
                pass
        self._drop(r)

    def _drop(self, r: Replica) -> None:
        if r.actor is not None:
            try:
                raylite.kill(r.actor)
            except Exception:
                pass
        if r.pg is not None:
            try:
                from raylite.util import remove_placement_group

                remove_placement_group(r.pg)
            except Exception:
                pass
        if r in self.replicas:
            self.replicas.remove(r)
        self.ongoing.pop(r.replica_id, None)
        if r.state == RUNNING:
            r.state = STOPPING
            self.publish()

    # ------------------------------------------------------------------ health
    def check_health(self, now: float) -> None:
        period = float(self.config["health_check_period_s"])
        for r in self.running():
            if not r.checking and now - r.last_check >= period:
                r.checking = True
                self.ctrl.spawn(self._check(r))

    async def _check(self, r: Replica) -> None:
        timeout = float(self.config["health_check_timeout_s"])
        try:
            await asyncio.wait_for(_ref(r.actor.check_health.remote()), timeout)
        except Exception as e:
            if r.state != RUNNING:
                return
            log.warning("replica %s of %s/%s failed its health check: %s", r.replica_id,
                        self.app, self.name, e)
            self.status, self.trigger = "UNHEALTHY", "HEALTH_CHECK_FAILED"
            self.message = f"Replica {r.replica_id} failed its health check: {e}"
            self.stop_replica(r, graceful=False)
            self.reconcile()
        finally:
            r.checking = False
            r.last_check = time.monotonic()

    # ------------------------------------------------------------------ autoscaling
    def total_load(self, now: float) -> float:
        live = {r.replica_id for r in self.running()}
        ongoing = sum(v for k, v in self.ongoing.items() if k in live)
        for rid, (_q, t) in list(self.queued.items()):
            if now - t > QUEUED_METRIC_TTL_S:
                del self.queued[rid]
        return ongoing + sum(q for q, _t in self.queued.values())

    def autoscale(self, now: float) -> None:
        if self.policy is None or self.deleting or self.status == "DEPLOY_FAILED":
            return
        self.policy.record(now, self.total_load(now))
        want = self.policy.decide(now, len(self.up_to_date()), self.target)
        if want != self.target:
            self.set_target(want, "AUTOSCALE_UP" if want > self.target else "AUTOSCALE_DOWN")

    # ------------------------------------------------------------------ publish
    def publish(self, error: str | None = None) -> None:
        """Tell routers the running replicas; ``error`` (or a failed deploy) makes them
        fail requests that no replica can take."""
        from raylite.serve._private.router import replicas_key

        cfg = self.config
        if error is None and self.status == "DEPLOY_FAILED":
            error = f"Deployment {self.name!r} of app {self.app!r} failed: {self.message}"
        self.ctrl.long_poll.publish(replicas_key(self.app, self.name), {
            "replicas": [(r.replica_id, r.actor) for r in self.replicas if r.state == RUNNING],
            "max_ongoing_requests": cfg["max_ongoing_requests"],
            "max_queued_requests": cfg["max_queued_requests"], "error": error})


def _initial_target(cfg: dict) -> int:
    auto = cfg["autoscaling_config"]
    if auto is None:
        return cfg["num_replicas"]
    init = auto.get("initial_replicas")
    return init if init is not None else auto["min_replicas"]


async def _ref(ref):
    return await ref
