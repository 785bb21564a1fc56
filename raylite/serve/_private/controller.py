"""The Serve controller: a detached, named async actor that owns Serve's state.

It keeps the applications and their deployments, runs the control loop (every 50 ms:
autoscaling decisions, reconciling replicas to their targets, health checks), starts the
HTTP proxy, publishes replica sets and routes by long poll, collects load metrics
(ongoing requests from replicas, queued requests from handles), and answers status and
REST queries. Replicas and the proxy are actors it owns, so they die with it.

It is given its collaborators (the replica and proxy actor classes, the function that
builds an application from a declarative config) when it is created
(``serve.api.start_controller``) rather than importing them: they import the client
side of Serve, which starts this controller.
"""

from __future__ import annotations

import asyncio
import logging
import time

import raylite
from raylite.serve._private import status as status_mod
from raylite.serve._private.deployment_state import RUNNING, DeploymentState
from raylite.serve._private.long_poll import LongPollHost
from raylite.serve.context import CONTROLLER_NAME, SERVE_NAMESPACE

log = logging.getLogger(__name__)

CONTROL_LOOP_S = 0.05
PROXY_CHECK_S = 1.0
PROXY_CHECK_TIMEOUT_S = 10.0


class AppState:
    def __init__(self, spec: dict):
        self.name = spec["name"]
        self.deployments: dict[str, DeploymentState] = {}
        self.runtime_edges: set[tuple[str, str, str]] = set()  # (from dep, to app, to dep)
        self.deleting = False
        self.ever_running = False
        self.from_config = None
        self.update(spec)

    def update(self, spec: dict) -> None:
        self.spec = spec
        self.route_prefix = spec["route_prefix"]
        self.ingress = spec["ingress"]
        self.external_scaler_enabled = spec["external_scaler_enabled"]
        self.last_deployed_time_s = time.time()


class ServeController:
    def __init__(self, replica_cls: type, proxy_cls: type, build_from_config):
        self.replica_cls = raylite.remote(replica_cls)
        self.proxy_cls = raylite.remote(proxy_cls)
        self.build_from_config = build_from_config  # config -> app spec (run as a task)
        self.self_handle = None
        self.long_poll = LongPollHost()
        self.apps: dict[str, AppState] = {}
        self.http_options: dict | None = None
        self.proxy = None
        self.proxy_info: dict | None = None
        self._proxy_lock = asyncio.Lock()
        self._proxy_watch = None
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False
        self.long_poll.publish("routes", {})
        self._loop = asyncio.get_running_loop().create_task(self._run())

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ control loop
    async def _run(self) -> None:
        while True:
            await asyncio.sleep(CONTROL_LOOP_S)
            try:
                self._tick(time.monotonic())
            except Exception:
                log.exception("serve control loop failed")

    def _tick(self, now: float) -> None:
        for app in list(self.apps.values()):
            for d in list(app.deployments.values()):
                d.autoscale(now)
                d.reconcile()
                d.check_health(now)
                if d.deleting and not d.replicas:
                    del app.deployments[d.name]
                    d.publish(error=f"Deployment {d.name!r} of app {app.name!r} was deleted.")
            if app.deleting and not app.deployments:
                del self.apps[app.name]
                self._publish_routes()
            elif status_mod.app_status(app) == "RUNNING":
                app.ever_running = True

    def replicas_per_node(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for app in self.apps.values():
            for d in app.deployments.values():
                for r in d.replicas:
                    if r.state == RUNNING and r.node_id:
                        counts[r.node_id] = counts.get(r.node_id, 0) + 1
        return counts

    def _publish_routes(self) -> None:
        self.long_poll.publish("routes", {
            a.route_prefix: (a.name, a.ingress) for a in self.apps.values()
            if a.route_prefix is not None and not a.deleting})

    # ------------------------------------------------------------------ proxy
    async def start_proxy(self, http_options: dict) -> dict:
        """Start the HTTP proxy once (later calls return where it listens)."""
        async with self._proxy_lock:
            if self.proxy_info is not None:
                return self.proxy_info
            self._find_self()
            proxy = self.proxy_cls.options(num_cpus=0).remote(
                self.self_handle, http_options)
            try:
                self.proxy_info = await proxy.ready.remote()
            except Exception:
                raylite.kill(proxy)
                raise
            self.proxy, self.http_options = proxy, http_options
            if self._proxy_watch is None:
                self._proxy_watch = self.spawn(self._watch_proxy())
            return self.proxy_info

    async def _watch_proxy(self) -> None:
        """Start a new proxy (same options) when the running one dies."""
        while True:
            await asyncio.sleep(PROXY_CHECK_S)
            proxy = self.proxy
            if proxy is None or self._stopping:
                continue
            try:
                await asyncio.wait_for(_ref(proxy.ready.remote()), PROXY_CHECK_TIMEOUT_S)
                continue
            except Exception as e:
                if self.proxy is not proxy or self._stopping:
                    continue
                log.warning("Serve's HTTP proxy is not answering (%s): starting a new one", e)
            try:
                raylite.kill(proxy)
            except Exception:
                pass
            self.proxy = self.proxy_info = None
            try:
                await self.start_proxy(self.http_options)
            except Exception:
                log.exception("could not restart Serve's HTTP proxy")

    def _find_self(self) -> None:
        if self.self_handle is None:
            self.self_handle = raylite.get_actor(CONTROLLER_NAME, namespace=SERVE_NAMESPACE)

    # ------------------------------------------------------------------ applications
    async def deploy_application(self, spec: dict) -> None:
        """Create or update an application (``serve.run``)."""
        if self._stopping:
            raise RuntimeError("Serve is shutting down")
        self._find_self()
        name, prefix = spec["name"], spec["route_prefix"]
        for other in self.apps.values():
            if other.name != name and prefix is not None and other.route_prefix == prefix \
                    and not other.deleting:
                raise ValueError(f"Prefix {prefix!r} is already used by application "
                                 f"{other.name!r}; pick another route_prefix.")
        app = self.apps.get(name)
        if app is None or app.deleting:
            if app is not None:  # deleted a moment ago and not gone yet: wait for it
                while name in self.apps:
                    await asyncio.sleep(CONTROL_LOOP_S)
            app = self.apps[name] = AppState(spec)
        else:
            app.update(spec)
        new = {s["name"]: s for s in spec["deployments"]}
        for dname, d in app.deployments.items():
            if dname not in new:
                d.deleting = True
        for dname, dspec in new.items():
            d = app.deployments.get(dname)
            if d is None or d.deleting:
                d = app.deployments[dname] = DeploymentState(self, name, dspec)
                d.publish()
            else:
                d.apply(dspec)
            d.reconcile()
        self._publish_routes()

    async def delete_application(self, name: str) -> None:
        app = self.apps.get(name)
        if app is None:
            return
        app.deleting = True
        for d in app.deployments.values():
            d.deleting = True
            d.reconcile()
        self._publish_routes()

    async def deploy_config(self, config) -> tuple[int, str]:
        """``PUT /api/serve/applications/``: (status code, message)."""
        if not isinstance(config, dict) or not isinstance(config.get("applications"), list):
            return 400, 'The config must be JSON {"applications": [...]}.'
        names = [a.get("name", "default") if isinstance(a, dict) else None
                 for a in config["applications"]]
        if len(set(names)) != len(names):
            return 400, f"Application names must be unique, got {names}"
        build = raylite.remote(num_cpus=0, max_retries=0)(self.build_from_config)
        specs = []
        for app_config in config["applications"]:
            try:
                specs.append(await build.remote(app_config))
            except Exception as e:
                return 400, f"Could not build application {app_config!r}:\n{e}"
        for name in [n for n in self.apps if n not in names]:
            await self.delete_application(name)
        try:
            for spec, app_config in zip(specs, config["applications"], strict=True):
                await self.deploy_application(spec)
                self.apps[spec["name"]].from_config = app_config
        except ValueError as e:
            return 400, str(e)
        return 200, "Applications are deploying."

    async def external_scale(self, app_name: str, dep_name: str, n: int) -> tuple[int, str]:
        """The external scaler's request: (status code, message)."""
        app = self.apps.get(app_name)
        if app is None or app.deleting:
            return 400, f"Application {app_name!r} not found."
        d = app.deployments.get(dep_name)
        if d is None or d.deleting:
            return 400, f"Deployment {dep_name!r} not found in application {app_name!r}."
        if not app.external_scaler_enabled:
            return 412, (f"Application {app_name!r} was not deployed with "
                         "external_scaler_enabled=True.")
        if not isinstance(n, int) or n < 0:
            return 400, "target_num_replicas must be an integer >= 0."
        d.set_target(n, "EXTERNAL_SCALE")
        d.reconcile()
        return 200, f"Target of {app_name}/{dep_name} set to {n} replicas."

    # ------------------------------------------------------------------ metrics
    def record_replica_metrics(self, app: str, dep: str, replica_id: str, ongoing: int):
        d = self._deployment(app, dep)
        if d is not None:
            d.ongoing[replica_id] = ongoing

    def record_handle_metrics(self, app: str, dep: str, router_id: str, queued: int):
        d = self._deployment(app, dep)
        if d is None:
            return
        if queued:
            d.queued[router_id] = (queued, time.monotonic())
        else:
            d.queued.pop(router_id, None)
        if queued and d.target == 0 and d.policy is not None:
            d.autoscale(time.monotonic())  # from zero: at once, not at the next tick
            d.reconcile()

    def record_handle_edge(self, app: str, dep: str, to_app: str, to_dep: str) -> None:
        a = self.apps.get(app)
        if a is not None:
            a.runtime_edges.add((dep, to_app, to_dep))

    def _deployment(self, app: str, dep: str):
        a = self.apps.get(app)
        return None if a is None else a.deployments.get(dep)

    # ------------------------------------------------------------------ queries
    async def listen_for_change(self, known: dict) -> dict:
        for key in known:
            if key.startswith("replicas:") and self.long_poll.get(key) is None:
                app, _, dep = key[len("replicas:"):].partition("/")
                if self._deployment(app, dep) is None:
                    self.long_poll.publish(key, {
                        "replicas": [], "max_ongoing_requests": 1, "max_queued_requests": -1,
                        "error": f"Deployment {dep!r} of app {app!r} does not exist."})
        return await self.long_poll.listen(known)

    def get_status(self) -> dict:
        return status_mod.status(self)

    def get_serve_details(self) -> dict:
        return status_mod.details(self)

    def get_app_info(self, name: str) -> dict | None:
        app = self.apps.get(name)
        if app is None or app.deleting:
            return None
        # settled: no live replica of an older version is left, so routers that ask for
        # the replica sets now get only the new code
        settled = all(r.version == d.version for d in app.deployments.values()
                      for r in d.live())
        return {"ingress": app.ingress, "status": status_mod.app_status(app),
                "message": status_mod.app_message(app), "settled": settled}

    def list_apps(self) -> list[str]:
        return [a.name for a in self.apps.values() if not a.deleting]

    def list_apps_all(self) -> list[str]:
        """Names of the applications, those being deleted too."""
        return list(self.apps)

    # ------------------------------------------------------------------ shutdown
    async def shutdown(self, timeout_s: float = 30.0) -> None:
        """Delete every application (replicas drain gracefully), stop the proxy, and
        exit this actor."""
        await self.graceful_shutdown(timeout_s)
        asyncio.get_running_loop().call_later(0.05, self._exit)

    def _exit(self) -> None:
        import os

        os._exit(0)

    async def graceful_shutdown(self, timeout_s: float = 30.0) -> None:
        self._stopping = True
        for name in list(self.apps):
            await self.delete_application(name)
        deadline = time.monotonic() + timeout_s
        while self.apps and time.monotonic() < deadline:
            await asyncio.sleep(CONTROL_LOOP_S)
        if self.proxy is not None:
            try:
                await asyncio.wait_for(_ref(self.proxy.stop.remote()), 5)
            except Exception:
                pass
            raylite.kill(self.proxy)
            self.proxy = self.proxy_info = None


async def _ref(ref):
    return await ref
