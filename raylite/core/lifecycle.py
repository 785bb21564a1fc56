"""``init`` / ``shutdown``: connect this process to a cluster (starting one when no
address is given) and disconnect it, and ``require_core``: the connection, made by an
implicit ``init()`` on first use as in Ray.

The public API modules (``api``, ``actor``, ``remote_function``, ``raylite.util``) reach
the CoreWorker through ``require_core``; the layers above the core reach the running
process through :mod:`raylite.core.runtime_api`, which never starts anything.
"""

from __future__ import annotations

import html
import inspect
import os
import threading

from raylite.core import driver, runtime, store
from raylite.core import protocol as P
from raylite.core.core_worker import HeadDiedError
from raylite.core.options import check_keywords

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
        alive = [n for n in cluster_info()["nodes"] if n["alive"]]
        return {"address": self.address, "nodes": len(alive),
                "resources": sum_resources(alive, "resources"), "version": _version()}

    def __repr__(self) -> str:
        try:
            s = self._summary()
        except Exception:
            return f"RayliteContext(address={self.address!r})"
        return (f"RayliteContext(address={s['address']!r}, nodes={s['nodes']}, "
                f"resources={s['resources']})")

    def _repr_html_(self) -> str:
        try:
            ns = cluster_info()["nodes"]
        except Exception:
            return f"<b>raylite</b> (disconnected) {html.escape(self.address)}"
        rows = "".join(
            f"<tr><td>{html.escape(n['node_id'])}</td><td>{'alive' if n['alive'] else 'dead'}"
            f"</td><td>{html.escape(_fmt_res(n['resources']))}</td>"
            f"<td>{html.escape(_fmt_labels(n['labels']))}</td></tr>" for n in ns)
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
         autoscaler=None, preload=None,
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

    ``preload=["torch"]`` (or ``RAYLITE_PRELOAD=torch``; a raylite extension, Ray has no
    such thing) has each node import those modules once, in the background, and then
    fork its workers from that state, so actors and tasks that use them (a training
    run's workers) skip the import: seconds for torch. By default the cluster started
    here preloads torch when this process has imported it already; ``preload=[]`` turns
    it off. The workers of the pool forked before are replaced while idle.
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
        if preload is not None:
            if address is not None:
                raise ValueError("preload applies to a cluster init() starts; set "
                                 "RAYLITE_PRELOAD for `raylite start`")
            preload = ",".join([preload] if isinstance(preload, str) else preload)
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
                                             host=_node_ip_address or "127.0.0.1",
                                             preload=preload)
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


def auto_init():
    """``init()`` with the defaults, for a first call that needs a cluster (as Ray), on
    this process's backend (raylite's own unless ``RAYLITE_BACKEND`` says otherwise)."""
    runtime.backend.init(None)
    return runtime.core


def require_core():
    """This process's CoreWorker; ``init()`` first when there is none yet."""
    core = runtime.core
    if core is None:
        core = auto_init()
    return core


def cluster_info() -> dict:
    """The head's node table (``CLUSTER_INFO``)."""
    return require_core().request_head(P.CLUSTER_INFO, {})


def sum_resources(nodes: list[dict], key: str) -> dict:
    """The sum of the nodes' ``key`` ("resources" or "available")."""
    total: dict = {}
    for n in nodes:
        for k, v in n[key].items():
            total[k] = total.get(k, 0.0) + v
    return total
