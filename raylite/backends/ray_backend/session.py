"""Connecting to Ray: ``init`` / ``shutdown`` on the Ray backend, the session object the
rest of raylite sees as ``runtime.core``, the context ``init`` returns and the runtime
context.

raylite code running inside Ray workers (Serve's replicas, Train's workers, Data's
tasks) uses Ray too: a process Ray has connected picks the Ray backend by itself
(``runtime.default_backend``), so no ``runtime_env`` is added to the job (one would keep
Ray from using the workers it starts ahead).
"""

from __future__ import annotations

import html
import logging
import os
import secrets
import threading

import ray

from raylite.core import runtime, runtime_api

log = logging.getLogger(__name__)
_lock = threading.Lock()
# what shapes a node: for a cluster init() starts, not one it joins
NODE_OPTIONS = {"num_cpus", "num_gpus", "resources", "labels", "object_store_memory"}
TOKEN_KEY = b"raylite:cluster_token"
KV_NAMESPACE = "raylite"
# options of raylite's own init() that name things only raylite's runtime has
OWN_ONLY = {"nodes": "virtual nodes", "autoscaler": "the local autoscaler",
            "preload": "preloaded workers", "_token": "cluster tokens",
            "_node_ip_address": "raylite's node addresses"}


class RaySession:
    """``runtime.core`` on the Ray backend: marks the process connected (so
    ``is_initialized`` and ``runtime_api.current`` work as on raylite's own runtime) and
    refuses the messages of raylite's own head, which Ray has no counterpart for."""

    def __init__(self, owns_connection: bool):
        ctx = ray.get_runtime_context()
        self.owns_connection = owns_connection
        self.namespace = ctx.namespace
        self.job_id = ctx.get_job_id()
        self.node_id = ctx.get_node_id()
        self.session = ray.get_runtime_context().gcs_address or "ray"

    def request_head(self, *args, **kwargs):
        raise RuntimeError("This needs raylite's own runtime (its head: virtual nodes, the "
                           "local autoscaler); it has no equivalent on the Ray backend.")

    send_head = request_head


class RayBackendContext:
    """What ``init(backend="ray")`` returns: Ray's context (``ray_context``), a context
    manager (exit = shutdown), and a short summary in notebooks."""

    def __init__(self, ray_context, address: str):
        self.ray_context = ray_context
        self.address = address
        self.address_info = getattr(ray_context, "address_info", {"address": address})
        self.dashboard_url = getattr(ray_context, "dashboard_url", None)
        self.backend = "ray"

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        from raylite.core.seam import shutdown

        shutdown()

    def disconnect(self) -> None:
        self.__exit__()

    def __repr__(self) -> str:
        return f"RayliteContext(backend='ray', address={self.address!r})"

    def _repr_html_(self) -> str:
        alive = [n for n in ray.nodes() if n["Alive"]]
        res = ray.cluster_resources()
        shown = ", ".join(f"{k} {v:g}" for k, v in res.items() if k in ("CPU", "GPU"))
        return (f"<div><b>raylite on Ray {html.escape(ray.__version__)}</b> &middot; "
                f"<code>{html.escape(self.address)}</code> &middot; {len(alive)} nodes "
                f"&middot; {html.escape(shown)}</div>")


def init(address: str | None = None, *, ignore_reinit_error: bool = False,
         runtime_env: dict | None = None, enable_zero_copy_torch_tensors=None,
         **ray_options) -> RayBackendContext:
    """``ray.init(address, ...)`` (Ray's options), then mark raylite connected. In a
    process Ray has connected already (a Ray worker, or a driver that called
    ``ray.init``) it joins that connection and leaves it open at ``shutdown``.
    ``enable_zero_copy_torch_tensors`` sets Ray's ``RAY_ENABLE_ZERO_COPY_TORCH_TENSORS``
    for this driver (also when Ray was imported already: each init may change it) and
    the job's workers. Joining a running cluster (``address`` or
    ``RAY_ADDRESS``), the node options (``num_cpus``, ``num_gpus``, ``resources``,
    ``labels``, ``object_store_memory``) are ignored, as on raylite's own runtime (Ray
    raises). raylite's own-runtime options (``nodes``, ``autoscaler``, ...) raise
    ValueError."""
    bad = sorted(set(ray_options) & set(OWN_ONLY))
    if bad:
        raise ValueError(f"init({', '.join(bad)}=...) needs raylite's own runtime "
                         f"({', '.join(OWN_ONLY[b] for b in bad)}); the Ray backend has none")
    with _lock:
        if runtime.core is not None:
            if ignore_reinit_error:
                return _context
            raise RuntimeError("raylite.init() was already called in this process; call "
                               "raylite.shutdown() first, or pass ignore_reinit_error=True.")
        env = dict(runtime_env) if runtime_env else None
        if enable_zero_copy_torch_tensors is not None:
            flag = "1" if enable_zero_copy_torch_tensors else "0"
            os.environ["RAY_ENABLE_ZERO_COPY_TORCH_TENSORS"] = flag
            env = dict(env or {})
            env["env_vars"] = dict(env.get("env_vars") or {},
                                   RAY_ENABLE_ZERO_COPY_TORCH_TENSORS=flag)
            # Ray reads the variable once, when it is imported, into a constant that each
            # connection's serializer reads: set that too, so a second init with another
            # value takes effect in this driver (a private name of Ray's)
            from ray._private import ray_constants

            ray_constants.RAY_ENABLE_ZERO_COPY_TORCH_TENSORS = bool(
                enable_zero_copy_torch_tensors)
        owns = not ray.is_initialized()
        if owns and (address or os.environ.get("RAY_ADDRESS")):
            # joining a running cluster: its nodes are what `ray start` made them (as on
            # raylite's own runtime, where init(address=...) ignores these too)
            for key in NODE_OPTIONS & set(ray_options):
                log.info("init(%s=...) ignored: joining an existing Ray cluster", key)
                ray_options.pop(key)
        if owns:
            ray_options.setdefault("logging_level", "WARNING")
            ray_options.setdefault("log_to_driver", True)
            ctx = ray.init(address, runtime_env=env, **ray_options)
        else:
            ctx = None
        globals()["_context"] = RayBackendContext(ctx, _address(ctx, address))
        runtime.core = RaySession(owns)
        return _context


_context: RayBackendContext | None = None


def _address(ctx, address) -> str:
    info = getattr(ctx, "address_info", None) or {}
    return info.get("gcs_address") or info.get("address") or address or "auto"


def shutdown() -> None:
    """Run raylite's shutdown hooks (widgets, Serve's client), then disconnect from Ray
    if ``init`` connected (a Ray worker's connection stays)."""
    with _lock:
        session = runtime.core
        if session is None:
            return
        runtime_api.run_shutdown_hooks()
        runtime.core = None
        globals()["_context"] = None
        if session.owns_connection:
            ray.shutdown()


class RuntimeContext:
    """Ray's runtime context with raylite's names: the same getters (node, job, task,
    actor, worker ids, assigned resources, accelerator ids, ``namespace``) and
    :meth:`get_cluster_token`."""

    def __init__(self, ctx):
        self._ctx = ctx

    def __getattr__(self, name: str):
        return getattr(self._ctx, name)

    @property
    def namespace(self) -> str:
        return self._ctx.namespace

    def get_cluster_token(self) -> str:
        """A secret shared by the processes of this Ray cluster (kept in Ray's internal
        KV store, made on first use): what Serve's REST API wants as ``Authorization:
        Bearer <token>``. Ray has no authentication by default, so anyone who can reach
        the cluster can read it; on raylite's own runtime it is the cluster's key."""
        from ray.experimental import internal_kv

        token = internal_kv._internal_kv_get(TOKEN_KEY, namespace=KV_NAMESPACE)
        if token is None:
            internal_kv._internal_kv_put(TOKEN_KEY, secrets.token_hex(16).encode(),
                                         overwrite=False, namespace=KV_NAMESPACE)
            token = internal_kv._internal_kv_get(TOKEN_KEY, namespace=KV_NAMESPACE)
        return token.decode()

    def get(self) -> dict:
        return {"node_id": self._ctx.get_node_id(), "job_id": self._ctx.get_job_id(),
                "task_id": self._ctx.get_task_id(), "actor_id": self._ctx.get_actor_id()}


def get_runtime_context() -> RuntimeContext:
    """The runtime context of this driver, task or actor (Ray's, with raylite's extras)."""
    ensure()
    return RuntimeContext(ray.get_runtime_context())


def ensure() -> None:
    """Connect on first use, as ``ray.get`` would (``init()`` with the defaults)."""
    if runtime.core is None:
        init(None)
