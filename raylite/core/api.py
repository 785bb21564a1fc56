"""The public core API: init/shutdown, remote, get/put/wait, cancel/kill, actors, context."""

from __future__ import annotations

import html
import inspect
import os
import threading

from raylite.core import driver, fetch, runtime, store
from raylite.core import protocol as P
from raylite.core.actor import ActorClass, ActorHandle
from raylite.core.core_worker import HeadDiedError
from raylite.core.object_ref import ObjectRef, ObjectRefGenerator
from raylite.core.options import check_keywords
from raylite.core.remote_function import RemoteFunction
from raylite.core.runtime_api import require_core

_init_lock = threading.Lock()


class RayliteContext:
    """What ``init`` returns: cluster facts, a context manager (exit = shutdown), and a
    rich summary in notebooks (Ray: ``RayContext``)."""

    def __init__(self, info: dict, address: str):
        self.address_info = {"address": address, "session": info["session"]}
        self.address = address
        self.session = info["session"]

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        shutdown()

    def disconnect(self) -> None:
        shutdown()

    def _summary(self) -> dict:
        ns = nodes()
        total = cluster_resources()
        return {"address": self.address, "nodes": len([n for n in ns if n["Alive"]]),
                "resources": total, "version": _version()}

    def __repr__(self) -> str:
        try:
            s = self._summary()
        except Exception:
            return f"RayliteContext(address={self.address!r})"
        return (f"RayliteContext(address={s['address']!r}, nodes={s['nodes']}, "
                f"resources={s['resources']})")

    def _repr_html_(self) -> str:
        try:
            ns = nodes()
        except Exception:
            return f"<b>raylite</b> (disconnected) {html.escape(self.address)}"
        rows = "".join(
            f"<tr><td>{html.escape(n['NodeID'])}</td><td>{'alive' if n['Alive'] else 'dead'}"
            f"</td><td>{html.escape(_fmt_res(n['Resources']))}</td>"
            f"<td>{html.escape(_fmt_labels(n['Labels']))}</td></tr>" for n in ns)
        return (f"<div><b>raylite {html.escape(_version())}</b> &middot; "
                f"<code>{html.escape(self.address)}</code> &middot; session "
                f"<code>{html.escape(self.session)}</code><table><tr><th>node</th><th>state</th>"
                f"<th>resources</th><th>labels</th></tr>{rows}</table></div>")


def _fmt_labels(labels: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in labels.items() if not k.startswith("raylite.io/"))


def _fmt_res(res: dict) -> str:
    return ", ".join(f"{k} {v / 2**30:.1f} GiB" if k == "memory" else f"{k} {v:g}"
                     for k, v in res.items())


def _version() -> str:
    from raylite import __version__

    return __version__


IGNORED_INIT_OPTIONS = frozenset({
    "include_dashboard", "dashboard_host", "dashboard_port", "job_config",
    "configure_logging", "logging_level", "logging_format", "logging_config", "local_mode",
    "enable_resource_isolation", "system_reserved_cpu", "system_reserved_memory", "_temp_dir",
    "_system_config", "_metrics_export_port", "_enable_object_reconstruction",
    "_plasma_directory", "_redis_password", "_memory", "_node_name"})


def init(address: str | None = None, *, num_cpus=None, num_gpus=None, resources=None,
         labels=None, object_store_memory=None, namespace: str | None = None,
         ignore_reinit_error: bool = False, log_to_driver: bool = True, nodes=None,
         runtime_env=None, enable_zero_copy_torch_tensors: bool | None = None,
         autoscaler=None,
         _node_ip_address: str | None = None, _token: str | None = None,
         **ray_options) -> RayliteContext:
    """Start a local cluster (or connect to one with ``address``) and return its context.

    ``nodes=[{"num_cpus": 1, "labels": {...}}, ...]`` starts several *virtual nodes*, each
    with its own agent, store, resources and labels (a raylite extension). ``address`` may
    be ``"auto"``, ``"host:port"`` or ``"tcp://host:port"``. Every cluster authenticates
    its peers: joining one needs its token (``_token`` or ``RAYLITE_TOKEN``; ``"auto"`` and
    the head's own machine read it from the 0600 file ``raylite start`` wrote).
    ``_node_ip_address`` is the address this process listens on, which the cluster's
    other processes must reach (default 127.0.0.1 for a cluster started here, else the
    address of the route to the head); a cluster started here on a non-loopback address
    encrypts its traffic (CURVE).

    These options of Ray's are accepted and ignored (raylite has no dashboard, logs
    through the standard ``logging`` module, and runs jobs without a job config):
    ``include_dashboard``, ``dashboard_host``, ``dashboard_port``, ``job_config``,
    ``configure_logging``, ``logging_level``, ``logging_format``, ``logging_config``,
    ``local_mode`` (tasks still run in workers), ``enable_resource_isolation``,
    ``system_reserved_cpu``, ``system_reserved_memory``, ``_temp_dir``,
    ``_system_config``, ``_metrics_export_port``, ``_enable_object_reconstruction``,
    ``_plasma_directory``, ``_redis_password``, ``_memory``, ``_node_name``.
    ``runtime_env`` is accepted too, and not applied: give it per task or actor. Any
    other keyword raises TypeError naming the closest valid one (``num_cpu`` -> "did you
    mean 'num_cpus'?"; Ray raises RuntimeError without a suggestion).

    ``object_store_memory`` caps each node's store: the oldest objects spill to disk
    (read back transparently); an object that cannot fit raises ObjectStoreFullError.

    ``enable_zero_copy_torch_tensors=True`` (or ``RAYLITE_ENABLE_ZERO_COPY_TORCH_TENSORS=1``)
    stores CPU torch tensors as uint8 views read back without a copy (Ray: the
    ``RAY_ENABLE_ZERO_COPY_TORCH_TENSORS`` environment variable); the processes of a
    cluster started here inherit the setting.

    ``autoscaler={...}`` starts :func:`raylite.autoscaler.start` with that config on the
    cluster started here (a raylite extension; Ray configures it in the cluster YAML).
    """
    check_keywords(ray_options, _INIT_KEYWORDS | IGNORED_INIT_OPTIONS, "init()")
    with _init_lock:
        if runtime.core is not None:
            if ignore_reinit_error:
                return driver._State.context
            raise RuntimeError("raylite.init() was already called in this process; call "
                               "raylite.shutdown() first, or pass ignore_reinit_error=True.")
        if labels:
            bad = [k for k in labels if k.startswith("raylite.io/")]
            if bad:
                raise ValueError(f"Labels {bad} use the reserved prefix 'raylite.io/'")
        if autoscaler is not None:  # a bad config fails before anything starts
            if address is not None:
                raise ValueError("init(autoscaler=...) needs a cluster init() starts; with "
                                 "address=, call raylite.autoscaler.start(config, provider)")
            from raylite.autoscaler import AutoscalerConfig

            autoscaler = AutoscalerConfig.from_dict(autoscaler)
        if object_store_memory is not None:
            if address is not None:
                raise ValueError("object_store_memory applies to a cluster init() starts; "
                                 "pass it to `raylite start` for an existing one")
            os.environ[store.CAPACITY_ENV] = str(int(object_store_memory))
        else:
            os.environ.pop(store.CAPACITY_ENV, None)
        if enable_zero_copy_torch_tensors is not None:
            from raylite.core import serialization

            serialization.set_zero_copy_torch(enable_zero_copy_torch_tensors)
        if address is None and os.environ.get("RAYLITE_ADDRESS"):
            address = os.environ["RAYLITE_ADDRESS"]
        if address is None:
            if nodes is not None and (num_cpus is not None or num_gpus is not None):
                raise ValueError("Pass either nodes=[...] or num_cpus/num_gpus, not both.")
            for attempt in range(3):
                cluster = driver.start_local(num_cpus, num_gpus, resources, labels, nodes,
                                             host=_node_ip_address or "127.0.0.1")
                try:
                    info = driver.connect(cluster.address, session=cluster.session,
                                          token=cluster.token, bind_host=cluster.host,
                                          namespace=namespace, log_to_driver=log_to_driver,
                                          expect_nodes=len(cluster.agents),
                                          node_id=next(iter(cluster.agents)),
                                          abort=cluster.head_died)
                    break
                except HeadDiedError:  # its ports were taken before it bound them: retry
                    cluster.stop()
                    if attempt == 2:
                        raise
                except BaseException:
                    cluster.stop()
                    raise
            driver._State.cluster = cluster
            addr = cluster.address
        else:
            addr, token = driver.resolve_address(address)
            info = driver.connect(addr, token=_token or token, namespace=namespace,
                                  log_to_driver=log_to_driver,
                                  bind_host=_node_ip_address or driver.local_ip_for(addr))
        driver._State.context = RayliteContext(info, addr.replace("tcp://", ""))
        driver.register_atexit(shutdown)
        if autoscaler is not None:
            from raylite.autoscaler import start as start_autoscaler

            start_autoscaler(autoscaler)
        return driver._State.context


_INIT_KEYWORDS = frozenset(p for p in inspect.signature(init).parameters if p != "ray_options")


def shutdown() -> None:
    """Disconnect, and stop the cluster if this process started it. ``init`` may follow."""
    with _init_lock:
        core = runtime.core
        if core is None:
            return
        for hook in list(driver._State.shutdown_hooks):
            try:
                hook()
            except Exception:  # a failing hook must not keep the cluster running
                pass
        cluster = driver._State.cluster
        if cluster is None:
            core.send_head(P.DRIVER_EXIT, {"job_id": core.job_id})
        runtime.core = None
        core.shutdown()
        if cluster is not None:
            cluster.stop()
        driver._State.cluster = None
        driver._State.context = None


def is_initialized() -> bool:
    return runtime.core is not None


def remote(*args, **options):
    """Make a function a remote function or a class an actor class (Ray: ``ray.remote``)."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("@remote takes keyword options only, e.g. @remote(num_cpus=2)")

    def wrap(obj):
        return _make_remote(obj, options)
    return wrap


def _make_remote(obj, options: dict):
    if isinstance(obj, type):
        return ActorClass(obj, options)
    return RemoteFunction(obj, options)


def _as_list(refs, what: str):
    if isinstance(refs, ObjectRef):
        return [refs], True
    if isinstance(refs, ObjectRefGenerator):
        raise TypeError(f"{what} got an ObjectRefGenerator; iterate it to get ObjectRefs.")
    if isinstance(refs, (list, tuple)):
        for r in refs:
            if not isinstance(r, ObjectRef):
                raise TypeError(f"{what} expects ObjectRefs, got {type(r).__name__}: {r!r}")
        return list(refs), False
    raise TypeError(f"{what} expects an ObjectRef or a list of ObjectRefs, got "
                    f"{type(refs).__name__}")


def get(refs, *, timeout: float | None = None, progress: bool = False):
    """Wait for objects and return their values (one value for one ref, else a list).

    Raises the task's error (an instance of both ``RayTaskError`` and the user's
    exception type) and ``GetTimeoutError`` after ``timeout`` seconds. ``progress=True``
    shows a progress bar while waiting (a raylite extension).
    """
    lst, single = _as_list(refs, "get")
    core = require_core()
    if progress and len(lst) > 1:
        _progress_wait(core, lst, timeout)
    values = core.get(lst, timeout)
    return values[0] if single else values


def _progress_wait(core, refs, timeout) -> None:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return
    pending = list(refs)
    with tqdm(total=len(refs), desc="raylite.get") as bar:
        while pending:
            ready, pending = core.wait(pending, 1, timeout)
            if not ready:
                break
            bar.update(len(ready))


def put(value) -> ObjectRef:
    """Store a value in the cluster and return a reference to it."""
    if isinstance(value, ObjectRef):
        raise TypeError("Calling put() on an ObjectRef is not allowed; pass the ref itself.")
    return require_core().put(value)


def wait(refs, *, num_returns: int = 1, timeout: float | None = None,
         fetch_local: bool = True):
    """Return ``(ready, not_ready)`` once ``num_returns`` refs are ready or on timeout.

    With ``fetch_local=True`` (the default, as Ray) a ref is ready once its value is
    also on this node: values in other nodes' stores are pulled here first (and pulls
    started go on after the wait returns). ``fetch_local=False``: ready once computed,
    wherever the value is. ``ready`` keeps the order of ``refs``."""
    if isinstance(refs, ObjectRef):
        raise TypeError("wait() expects a list of ObjectRefs, got a single ObjectRef")
    lst, _ = _as_list(refs, "wait")
    if len(set(lst)) != len(lst):
        raise ValueError("wait() got duplicate ObjectRefs")
    if num_returns <= 0 or num_returns > len(lst):
        raise ValueError(f"num_returns must be between 1 and len(refs)={len(lst)}, "
                         f"got {num_returns}")
    core = require_core()
    if fetch_local:
        return fetch.wait_local(core, lst, num_returns, timeout)
    return core.wait(lst, num_returns, timeout)


def cancel(ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that produces ``ref``: a queued task is dropped, a running one gets
    ``TaskCancelledError`` raised inside it; ``force=True`` kills its worker. ``get`` of
    the ref then raises ``TaskCancelledError``. (``recursive`` is accepted; raylite does
    not yet cancel the children a task submitted.)"""
    if not isinstance(ref, ObjectRef):
        raise TypeError(f"cancel() expects an ObjectRef, got {type(ref).__name__}")
    require_core().cancel(ref, force)


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Kill an actor's process now; pending and later calls raise ``ActorDiedError``
    (unless ``no_restart=False`` and it has restarts left)."""
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"kill() expects an actor handle, got {type(actor).__name__}")
    require_core().kill_actor(actor._actor_id, no_restart)


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """Look up a named actor (in this job's namespace unless ``namespace`` is given)."""
    core = require_core()
    ns = core.namespace if namespace is None else namespace
    info = core.request_head(P.GET_ACTOR_INFO, {"name": name, "namespace": ns})
    return ActorHandle(info["actor_id"], info["meta"], 0, name)


def _cluster_info() -> dict:
    return require_core().request_head(P.CLUSTER_INFO, {})


def nodes() -> list[dict]:
    """One dict per node, with Ray's keys."""
    out = []
    for n in _cluster_info()["nodes"]:
        res = dict(n["resources"])
        out.append({"NodeID": n["node_id"], "Alive": n["alive"], "Resources": res,
                    "Labels": n["labels"], "NodeManagerAddress": n["addr"].split("//")[-1]
                    .rsplit(":", 1)[0], "NodeManagerHostname": n["host"],
                    "NodeName": n["host"], "alive": n["alive"],
                    "AvailableResources": dict(n["available"])})
    return out


def _sum(key: str) -> dict:
    total: dict = {}
    for n in _cluster_info()["nodes"]:
        if n["alive"]:
            for k, v in n[key].items():
                total[k] = total.get(k, 0.0) + v
    return total


def cluster_resources() -> dict:
    """Total resources of the live nodes."""
    return _sum("resources")


def available_resources() -> dict:
    """Resources not held by running tasks and actors."""
    return {k: v for k, v in _sum("available").items() if v > 1e-9}


class RuntimeContext:
    """What the current driver, task or actor is (Ray: ``ray.get_runtime_context()``)."""

    def __init__(self, core):
        self._core = core
        self._ctx = runtime.task_context

    def get_node_id(self) -> str:
        return self._core.node_id

    def get_job_id(self) -> str:
        return self._ctx.job_id or self._core.job_id

    def get_task_id(self) -> str | None:
        return self._ctx.task_id.hex() if self._ctx.task_id else None

    def get_actor_id(self) -> str | None:
        return self._ctx.actor_id.hex() if self._ctx.actor_id else None

    def get_worker_id(self) -> str:
        return self._core.worker_id or self._core.job_id

    def get_assigned_resources(self) -> dict:
        return dict(self._ctx.resources or {})

    def get_accelerator_ids(self) -> dict:
        return {"GPU": [str(g) for g in self._ctx.gpu_ids]}

    def get_cluster_token(self) -> str:
        """The cluster's secret (a raylite extension; Ray's closest is its token auth
        mode). Peers authenticate with it, and Serve's REST API wants it as
        ``Authorization: Bearer <token>`` on every request that changes something."""
        return self._core.transport.token

    @property
    def namespace(self) -> str:
        return self._core.namespace

    def get(self) -> dict:
        return {"node_id": self.get_node_id(), "job_id": self.get_job_id(),
                "task_id": self.get_task_id(), "actor_id": self.get_actor_id()}


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext(require_core())


def get_gpu_ids() -> list[int]:
    return list(runtime.task_context.gpu_ids)
