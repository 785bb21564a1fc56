"""The backend seam: the public core API (``raylite.init``, ``get``, ``put``, ``wait``,
``cancel``, ``kill``, ``get_actor``, ``nodes``, the resources, the runtime context) as
thin calls into the backend this process uses (``runtime.backend``).

``init(backend="ray", address=...)`` (or ``RAYLITE_BACKEND=ray``) sends everything to a
Ray 2.53 cluster; the default is raylite's own runtime. The choice is made once, at
``init`` (or on first use): each function here is one attribute lookup and one call,
with no test of which backend runs, so neither backend pays for the other. Remote
functions and actor classes (``raylite.remote``) are the same objects on both backends
and dispatch the same way (``runtime.backend.submit_task`` / ``create_actor``), so code
decorated before ``init`` runs on whichever backend ``init`` chose.

Nothing above this seam knows which backend runs; where behaviour differs (ObjectRef
types, errors, what the state API can see) the README's table says so.
"""

from __future__ import annotations

import inspect

from raylite.core import lifecycle, runtime


def init(address: str | None = None, *, backend: str | None = None, **options):
    """Connect to a cluster (or start one) on ``backend`` and return its context.

    ``backend``: ``"raylite"`` (the default: raylite's own runtime, see
    :func:`raylite.core.lifecycle.init` for its options) or ``"ray"`` (a Ray 2.53
    cluster: ``address`` is Ray's, e.g. ``"auto"`` or ``"host:6379"``, and the options are
    ``ray.init``'s; needs ``pip install 'raylite[ray]'``). Without ``backend``,
    ``RAYLITE_BACKEND`` decides. Ray has no ``backend`` argument: this is raylite's seam.
    """
    if runtime.core is not None:  # connected: its backend applies the re-init rules
        return runtime.backend.init(address, **options)
    chosen = runtime.select_backend(backend or runtime.default_backend())
    try:
        return chosen.init(address, **options)
    except BaseException:  # nothing connected: choose again next time
        runtime.reset_backend()
        raise


# help(raylite.init) shows raylite's own options too (the Ray options it ignores among them)
init.__doc__ = inspect.cleandoc(init.__doc__ or "") + \
    "\n\nOn raylite's own runtime (``lifecycle.init``):\n\n" + \
    inspect.cleandoc(lifecycle.init.__doc__ or "")


def shutdown() -> None:
    """Disconnect (and stop what ``init`` started); the next ``init`` may pick another
    backend."""
    runtime.backend.shutdown()
    runtime.reset_backend()


def get(refs, *, timeout: float | None = None, progress: bool = False):
    """Wait for objects and return their values (one value for one ref, else a list).

    Raises the task's error (an instance of both ``RayTaskError`` and the user's
    exception type) and ``GetTimeoutError`` after ``timeout`` seconds, on either backend
    (Ray's errors are mapped to raylite's types). ``progress=True`` shows a progress bar
    while waiting (a raylite extension)."""
    return runtime.backend.get(refs, timeout=timeout, progress=progress)


def put(value):
    """Store a value in the cluster and return a reference to it (on Ray: a
    ``ray.ObjectRef``)."""
    return runtime.backend.put(value)


def wait(refs, *, num_returns: int = 1, timeout: float | None = None,
         fetch_local: bool = True):
    """Return ``(ready, not_ready)`` once ``num_returns`` refs are ready or on timeout
    (``fetch_local`` as in Ray: ready once the value is also on this node)."""
    return runtime.backend.wait(refs, num_returns=num_returns, timeout=timeout,
                                fetch_local=fetch_local)


def cancel(ref, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that produces ``ref`` (``get`` then raises
    ``TaskCancelledError``); ``force=True`` kills its worker."""
    return runtime.backend.cancel(ref, force=force, recursive=recursive)


def kill(actor, *, no_restart: bool = True) -> None:
    """Kill an actor now; its pending and later calls raise ``ActorDiedError``."""
    return runtime.backend.kill(actor, no_restart=no_restart)


def get_actor(name: str, namespace: str | None = None):
    """Look up a named actor (in this job's namespace unless ``namespace`` is given)."""
    return runtime.backend.get_actor(name, namespace)


def nodes() -> list[dict]:
    """One dict per node, with Ray's keys (``NodeID``, ``Alive``, ``Resources``,
    ``Labels``, ...) plus ``AvailableResources``."""
    return runtime.backend.nodes()


def cluster_resources() -> dict:
    """Total resources of the live nodes."""
    return runtime.backend.cluster_resources()


def available_resources() -> dict:
    """Resources not held by running tasks and actors."""
    return runtime.backend.available_resources()


def get_runtime_context():
    """What the current driver, task or actor is: ``get_node_id``, ``get_job_id``,
    ``get_task_id``, ``get_actor_id``, ``get_assigned_resources``,
    ``get_accelerator_ids``, ``get_cluster_token`` (a raylite extension)."""
    return runtime.backend.get_runtime_context()


def get_gpu_ids() -> list:
    """The GPUs assigned to the current task or actor."""
    return runtime.backend.get_gpu_ids()
