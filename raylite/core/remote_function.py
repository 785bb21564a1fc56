"""Remote functions: ``@raylite.remote`` on a function."""

from __future__ import annotations

import functools

from raylite.core import options as opt
from raylite.core import runtime
from raylite.core import serialization as ser
from raylite.core.lifecycle import require_core
from raylite.core.object_ref import new_id


class RemoteFunction:
    """A function that runs as a task: ``f.remote(*args)`` returns ObjectRef(s).

    As in Ray, the function is pickled (by value when defined in a notebook or
    ``__main__``) the first time it is called remotely, and shipped to each worker once.
    ``max_calls=n`` makes a worker exit after running the function ``n`` times (a fresh
    worker takes over), to reclaim memory a library leaks; such tasks are not pipelined
    to busy workers. Ray defaults ``max_calls`` to 1 for GPU tasks; raylite to 0 (no
    limit) for every task.
    """

    def __init__(self, fn, options: dict):
        if not callable(fn):
            raise TypeError(f"@remote needs a function or a class, got {fn!r}")
        self._function = fn
        self._options = opt.validate(dict(options), for_actor=False)
        self._fn_id = new_id()
        self._pickled = None
        self._spec = opt.lease_spec(self._options)  # validates strategy and labels now
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        raise TypeError(f"Remote function {self._function.__name__} cannot be called directly; "
                        f"use {self._function.__name__}.remote(...) (or call "
                        f"{self._function.__name__}._function(...) to run it locally).")

    def options(self, **options) -> _BoundOptions:
        """Return a callable with overridden options: ``f.options(num_cpus=2).remote()``."""
        merged = dict(self._options)
        merged.update(options)
        return _BoundOptions(self, opt.validate(merged, for_actor=False))

    def remote(self, *args, **kwargs):
        # the backend's submission (raylite's own: _submit below; Ray's: ray's .remote)
        return runtime.backend.submit_task(self, args, kwargs, self._options, self._spec)

    def _fn_bytes(self) -> bytes:
        if self._pickled is None:
            self._pickled = ser.dumps_code(self._function)
        return self._pickled

    def _submit(self, args, kwargs, options: dict, spec):
        core = require_core()
        if runtime.task_context.placement_group is not None:
            captured = opt.captured_strategy(options)
            if captured is not None:
                options, spec = captured, opt.lease_spec(captured)
        key, demand, extra = spec
        nret = options.get("num_returns", 1)
        if nret == "dynamic":
            nret = "streaming"
        retry_exc = options.get("retry_exceptions", False)
        if isinstance(retry_exc, (list, tuple)):
            retry_exc = tuple(retry_exc)
        out = core.submit_task(
            self._fn_id, self._fn_bytes(), options.get("name") or self._function.__qualname__,
            args, kwargs,
            key=key, demand=demand, nret=nret, max_retries=options.get("max_retries", 3),
            retry_exceptions=retry_exc, lease_opts=extra)
        if isinstance(out, list):
            return out[0] if nret == 1 else out
        return out

    def bind(self, *args, **kwargs):
        raise NotImplementedError("DAG .bind() on tasks is not supported by raylite")


class _BoundOptions:
    def __init__(self, fn: RemoteFunction, options: dict):
        self._fn = fn
        self._options = options
        self._spec = opt.lease_spec(options)

    def remote(self, *args, **kwargs):
        return runtime.backend.submit_task(self._fn, args, kwargs, self._options, self._spec)
