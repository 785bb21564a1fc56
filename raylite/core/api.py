"""The public core API: init/shutdown, remote, get/put/wait, cancel/kill, actors, context.

``init``/``shutdown`` live in :mod:`raylite.core.lifecycle` (with ``require_core``, the
implicit ``init`` on first use) and are re-exported here, so ``raylite.init`` is this
module's as Ray's is ``ray.init``.
"""

from __future__ import annotations

from raylite.core import fetch, runtime
from raylite.core import protocol as P
from raylite.core.actor import ActorClass, ActorHandle
from raylite.core.lifecycle import (  # noqa: F401  (re-exported: the public API)
    IGNORED_INIT_OPTIONS,
    RayliteContext,
    cluster_info,
    init,
    is_initialized,
    require_core,
    shutdown,
    sum_resources,
)
from raylite.core.object_ref import ObjectRef, ObjectRefGenerator
from raylite.core.remote_function import RemoteFunction

_cluster_info = cluster_info  # the name tests use


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
        progress_wait(lambda pending: core.wait(pending, 1, timeout), lst)
    values = core.get(lst, timeout)
    return values[0] if single else values


def progress_wait(wait_one, refs: list) -> None:
    """Show a progress bar (tqdm, when installed) until ``refs`` are ready;
    ``wait_one(pending) -> (ready, not_ready)`` waits for one (each backend's own)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return
    pending = list(refs)
    with tqdm(total=len(refs), desc="raylite.get") as bar:
        while pending:
            ready, pending = wait_one(pending)
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
    the ref then raises ``TaskCancelledError``. With ``recursive`` (the default, as in
    Ray) the tasks it submitted and that have not finished are cancelled too, and
    theirs. Differs from Ray: the children of an async actor call are not cancelled with
    it (its coroutines share one thread, so their children cannot be told apart)."""
    if not isinstance(ref, ObjectRef):
        raise TypeError(f"cancel() expects an ObjectRef, got {type(ref).__name__}")
    require_core().cancel(ref, force, recursive)


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


def nodes() -> list[dict]:
    """One dict per node, with Ray's keys."""
    out = []
    for n in cluster_info()["nodes"]:
        res = dict(n["resources"])
        out.append({"NodeID": n["node_id"], "Alive": n["alive"], "Resources": res,
                    "Labels": n["labels"], "NodeManagerAddress": n["addr"].split("//")[-1]
                    .rsplit(":", 1)[0], "NodeManagerHostname": n["host"],
                    "NodeName": n["host"], "alive": n["alive"],
                    "AvailableResources": dict(n["available"])})
    return out


def _sum(key: str) -> dict:
    return sum_resources([n for n in cluster_info()["nodes"] if n["alive"]], key)


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
