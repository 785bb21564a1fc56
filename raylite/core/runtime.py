"""Process-wide runtime state: the CoreWorker of this process, the task context, and the
backend that implements the public API.

``core`` is set by ``raylite.init`` in a driver and by the worker main in a worker (on
the Ray backend: the Ray backend's session object, so ``is_initialized`` and the
session tokens of :mod:`raylite.core.runtime_api` mean the same on both backends).
The task context is thread-local because threaded and async actors run several calls
at once.

``backend`` is the module that implements the public API for this process: raylite's
own runtime (:mod:`raylite.core.own_backend`) or Ray (``raylite.backends.ray_backend``).
The entry points (``raylite.get``, ``RemoteFunction.remote``, the placement group and
state functions) call ``runtime.backend.<name>`` and nothing else: the choice is made
once, by ``raylite.init(backend=...)`` or on first use (``RAYLITE_BACKEND``), never by a
test on each call.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading

core = None  # the CoreWorker of this process, or None before init / after shutdown

# backends by name -> the module implementing them (registered by name, like dask's
# comm backends by scheme; imported only when chosen)
BACKENDS = {"raylite": "raylite.core.own_backend", "ray": "raylite.backends.ray_backend"}
BACKEND_ENV = "RAYLITE_BACKEND"


class TaskContext(threading.local):
    task_id: bytes | None = None
    job_id: str | None = None
    actor_id: bytes | None = None
    resources: dict | None = None
    gpu_ids: tuple = ()
    placement_group: list | None = None  # [pg_id, bundle_index, capture_child_tasks]
    # the task whose children the tasks submitted now are (``cancel(recursive=True)``
    # cancels them): set while a task or threaded actor call runs; not for async actor
    # calls, whose coroutines share one thread and so could not be told apart
    cancel_scope: bytes | None = None
    in_exec_thread: bool = False


task_context = TaskContext()


def default_backend() -> str:
    """The backend a process uses when ``init`` names none: ``RAYLITE_BACKEND``, else Ray
    in a process Ray has connected already (a Ray worker that unpickles raylite code),
    else raylite's own."""
    name = os.environ.get(BACKEND_ENV)
    if name:
        return name
    ray = sys.modules.get("ray")
    is_init = getattr(ray, "is_initialized", None)
    if is_init is not None and is_init():
        return "ray"
    return "raylite"


def select_backend(name: str):
    """Make ``name`` this process's backend and return its module."""
    global backend
    if name not in BACKENDS:
        raise ValueError(f"Unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    module = importlib.import_module(BACKENDS[name])
    backend = module
    return module


def reset_backend() -> None:
    """Choose the backend again on next use (after ``shutdown()``)."""
    global backend
    backend = _Unselected()


class _Unselected:
    """Stands for the backend until the first entry point uses it: that use selects
    :func:`default_backend`, which replaces this object, so later calls go straight to
    the backend's module."""

    def __getattr__(self, name: str):
        return getattr(select_backend(default_backend()), name)


backend = _Unselected()
