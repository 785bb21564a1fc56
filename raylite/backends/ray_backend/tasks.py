"""Tasks, actors and objects on Ray: raylite's remote functions and actor classes become
Ray's (made once per function or class, then called directly), and ``get``, ``put``,
``wait``, ``cancel``, ``kill``, ``get_actor`` are Ray's with its errors mapped to
raylite's.

What comes back is Ray's own: ``ray.ObjectRef``, Ray actor handles,
``ray.ObjectRefGenerator`` (they pickle, await and pass into tasks as Ray's do). The
options were checked by raylite when the function was decorated; here they are handed
to Ray unchanged, except raylite's scheduling strategy objects (Ray's are built from
them).
"""

from __future__ import annotations

import ray
import ray.exceptions as rx
from ray.util import scheduling_strategies as ray_strategies

from raylite.backends.ray_backend import errors
from raylite.backends.ray_backend.session import ensure
from raylite.core.api import progress_wait

_DROPPED = frozenset({"_metadata"})


def ray_options(options: dict) -> dict:
    """raylite's task or actor options as Ray's."""
    out = {k: v for k, v in options.items() if k not in _DROPPED}
    strategy = out.get("scheduling_strategy")
    if strategy is not None and not isinstance(strategy, str):
        out["scheduling_strategy"] = ray_strategy(strategy)
    if out.get("num_returns") == "dynamic":
        out["num_returns"] = "streaming"
    return out


def ray_strategy(strategy):
    """Ray's scheduling strategy for one of raylite's (Ray's own pass through)."""
    pg = getattr(strategy, "placement_group", None)
    if pg is not None and hasattr(strategy, "placement_group_bundle_index"):
        return ray_strategies.PlacementGroupSchedulingStrategy(
            pg, strategy.placement_group_bundle_index,
            strategy.placement_group_capture_child_tasks)
    if hasattr(strategy, "node_id") and hasattr(strategy, "soft"):
        return ray_strategies.NodeAffinitySchedulingStrategy(strategy.node_id, strategy.soft)
    return strategy


# ------------------------------------------------------------------ tasks and actors
def _base_function(fn):
    """Ray's remote function for a raylite one, with its decorator options (made once:
    Ray exports a function's code once per remote function)."""
    base = fn.__dict__.get("_ray_remote")
    if base is None:
        base = _plain_function(fn)
        opts = ray_options(fn._options)
        if opts:  # some options (name, ...) Ray takes only in .options()
            base = base.options(**opts)
        fn.__dict__["_ray_remote"] = base
    return base


def submit_task(fn, args, kwargs, options: dict, spec):
    """``f.remote(*args)`` / ``f.options(...).remote(*args)`` on Ray."""
    base = fn.__dict__.get("_ray_remote") or _base_function(fn)
    if options is fn._options:
        return base.remote(*args, **kwargs)
    return _plain_function(fn).options(**ray_options(options)).remote(*args, **kwargs)


def _plain_function(fn):
    """Ray's remote function without options (``.options()`` merges onto it)."""
    plain = fn.__dict__.get("_ray_plain")
    if plain is None:
        ensure()
        plain = fn.__dict__["_ray_plain"] = ray.remote(fn._function)
    return plain


def _base_actor_class(ac):
    base = ac.__dict__.get("_ray_actor_class")
    if base is None:
        ensure()
        cls = ac._cls
        for name in ac._meta["methods"]:  # @raylite.method -> Ray's attributes
            fn = getattr(cls, name, None)
            mopts = getattr(fn, "__raylite_method_options__", None)
            if mopts:
                fn = getattr(fn, "__func__", fn)
                fn.__ray_num_returns__ = mopts.get("num_returns", 1)
                if mopts.get("concurrency_group"):
                    fn.__ray_concurrency_group__ = mopts["concurrency_group"]
        base = ac.__dict__["_ray_plain"] = ray.remote(cls)
        opts = ray_options(ac._options)
        if opts:
            base = base.options(**opts)
        ac.__dict__["_ray_actor_class"] = base
    return base


def create_actor(ac, args, kwargs, options: dict):
    """``Cls.remote(*args)`` on Ray: a Ray actor handle."""
    base = ac.__dict__.get("_ray_actor_class") or _base_actor_class(ac)
    if options is not ac._options:  # raylite merged the class's options in already
        base = ac.__dict__["_ray_plain"].options(**ray_options(options))
    try:
        return base.remote(*args, **kwargs)
    except rx.RayError as e:
        errors.reraise(e)


# ------------------------------------------------------------------ objects
def get(refs, *, timeout: float | None = None, progress: bool = False):
    """``ray.get``, with Ray's errors as raylite's."""
    try:
        if progress and isinstance(refs, list) and len(refs) > 1:
            progress_wait(lambda p: ray.wait(p, num_returns=1, timeout=timeout), refs)
        return ray.get(refs, timeout=timeout)
    except rx.RayError as e:
        errors.reraise(e)


def put(value):
    """``ray.put``."""
    ensure()
    try:
        return ray.put(value)
    except rx.RayError as e:
        errors.reraise(e)


def wait(refs, *, num_returns: int = 1, timeout: float | None = None,
         fetch_local: bool = True):
    """``ray.wait``."""
    try:
        return ray.wait(refs, num_returns=num_returns, timeout=timeout,
                        fetch_local=fetch_local)
    except rx.RayError as e:
        errors.reraise(e)


def cancel(ref, *, force: bool = False, recursive: bool = True) -> None:
    """``ray.cancel`` (Ray cancels the children of a cancelled task too)."""
    ray.cancel(ref, force=force, recursive=recursive)


def kill(actor, *, no_restart: bool = True) -> None:
    """``ray.kill``."""
    try:
        ray.kill(actor, no_restart=no_restart)
    except rx.RayError as e:
        errors.reraise(e)


def get_actor(name: str, namespace: str | None = None):
    """``ray.get_actor``: a Ray actor handle (ValueError when there is none)."""
    ensure()
    return ray.get_actor(name, namespace=namespace)


def get_gpu_ids() -> list:
    return ray.get_gpu_ids()


# ------------------------------------------------------------------ the cluster
def nodes() -> list[dict]:
    """``ray.nodes()``, plus each node's ``AvailableResources`` (raylite's key)."""
    ensure()
    available = _available_per_node()
    out = []
    for n in ray.nodes():
        n = dict(n)
        n["AvailableResources"] = available.get(n["NodeID"], {}) if n["Alive"] else {}
        out.append(n)
    return out


def _available_per_node() -> dict:
    from ray._private import state

    try:
        return state.available_resources_per_node()
    except Exception:  # an older or newer Ray without it
        return {}


def cluster_resources() -> dict:
    ensure()
    return ray.cluster_resources()


def available_resources() -> dict:
    ensure()
    return ray.available_resources()
