"""Actors: ``@raylite.remote`` on a class, actor handles and their methods."""

from __future__ import annotations

import inspect
import sys

from raylite.core import options as opt
from raylite.core import runtime, serialization
from raylite.core import serialization as ser
from raylite.core.lifecycle import require_core

METHOD_OPTIONS = frozenset({"num_returns", "concurrency_group", "name"})


def method(*args, **options):
    """Decorate an actor method to set its defaults (Ray: ``ray.method``):
    ``num_returns`` and ``concurrency_group`` (a group the actor class declares in
    ``concurrency_groups``). ``@method`` with no arguments is allowed. Ray's other
    method options (``max_task_retries``, ``retry_exceptions``, ...) raise TypeError."""
    opt.check_keywords(options, METHOD_OPTIONS - {"name"}, "method()")

    def wrap(fn):
        fn.__raylite_method_options__ = {"num_returns": options.get("num_returns", 1),
                                         "concurrency_group": options.get("concurrency_group")}
        return fn
    if len(args) == 1 and callable(args[0]) and not options:
        return wrap(args[0])
    if args:
        raise TypeError("@method takes keyword options only, e.g. @method(num_returns=2)")
    return wrap


def _class_meta(cls) -> dict:
    methods = {}
    is_async = False
    for name, member in inspect.getmembers(cls):
        if not callable(member) or (name.startswith("__") and name != "__call__"):
            continue
        fn = inspect.unwrap(member)
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            is_async = True
        mopts = getattr(member, "__raylite_method_options__", {})
        methods[name] = {"num_returns": mopts.get("num_returns", 1)}
        if mopts.get("concurrency_group"):
            methods[name]["concurrency_group"] = mopts["concurrency_group"]
    methods["__ray_terminate__"] = {"num_returns": 1}
    return {"class_name": cls.__name__, "methods": methods, "is_async": is_async}


class ActorClass:
    """A class whose instances live in their own worker process.

    ``Cls.remote(*args)`` starts the actor and returns an :class:`ActorHandle` at once
    (construction happens in the background, as in Ray).

    ``concurrency_groups={"io": 2, ...}`` gives a threaded or async actor named groups of
    calls, each with its own concurrency limit (methods join one with
    ``@raylite.method(concurrency_group="io")``, a call with
    ``.options(concurrency_group="io")``); the rest run in the default group, limited by
    ``max_concurrency``. As in Ray, each group of a threaded actor has its own thread
    pool and each group of an async actor its own event loop (thread), so a group that
    is busy or blocked does not hold up the others. ``max_pending_calls=n`` makes a call
    raise ``PendingCallsLimitExceeded`` while ``n`` calls made from this process to that
    actor have not finished (as in Ray; -1, the default, is no limit).
    """

    def __init__(self, cls, options: dict):
        self._cls = cls
        self._options = opt.validate(dict(options), for_actor=True)
        self._meta = _class_meta(cls)
        self._pickled = None
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__doc__ = cls.__doc__

    def __call__(self, *args, **kwargs):
        raise TypeError(f"Actor class {self._cls.__name__} cannot be instantiated directly; "
                        f"use {self._cls.__name__}.remote(...).")

    def options(self, **options) -> _BoundActorClass:
        merged = dict(self._options)
        merged.update(options)
        return _BoundActorClass(self, opt.validate(merged, for_actor=True))

    def remote(self, *args, **kwargs) -> ActorHandle:
        # the backend's creation (raylite's own: _create below; Ray's: a Ray actor)
        return runtime.backend.create_actor(self, args, kwargs, self._options)

    def _cls_bytes(self) -> bytes:
        if self._pickled is None:
            self._pickled = ser.dumps_code(self._cls)
        return self._pickled

    def _create(self, args, kwargs, options: dict) -> ActorHandle:
        core = require_core()
        options = opt.captured_strategy(options) or options
        _, demand, extra = opt.lease_spec(options, for_actor=True)
        conc = options.get("max_concurrency")
        if conc is None:
            conc = 1000 if self._meta["is_async"] else 1
        namespace = options.get("namespace")
        if namespace is None:
            namespace = core.namespace
        meta = _instance_meta(self._meta, options)
        spec = {
            "cls": self._cls_bytes(), "meta": meta, "demand": demand, **extra,
            "name": options.get("name") or "", "namespace": namespace,
            "lifetime": options.get("lifetime"), "max_restarts": options.get("max_restarts", 0),
            "max_concurrency": conc, "get_if_exists": options.get("get_if_exists", False),
            "hold_cpu": options.get("num_cpus") is not None, "node_id": core.node_id,
            "sys_path": [p for p in sys.path if p],  # the creator's import path, as for tasks
        }
        retries = options.get("max_task_retries", 0)
        info = core.create_actor(spec, args, kwargs, retries)
        # unnamed, non-detached actors end when the last handle anywhere is gone (as Ray)
        owner = core.addr if not spec["name"] and spec["lifetime"] != "detached" else None
        return ActorHandle(info["actor_id"], info["meta"], retries, options.get("name") or "",
                           owner)

    def bind(self, *args, **kwargs):
        raise NotImplementedError("DAG .bind() is not supported by raylite core; "
                                  "raylite.serve deployments have .bind()")


def _instance_meta(meta: dict, options: dict) -> dict:
    """The class's meta plus what this actor's options add to it (its handles carry it,
    and ``get_actor`` returns it): the concurrency groups, the pending-calls limit."""
    groups = dict(options.get("concurrency_groups") or {})
    for name, m in meta["methods"].items():
        group = m.get("concurrency_group")
        if group is not None and group not in groups:
            raise ValueError(f"Method {meta['class_name']}.{name} is in concurrency group "
                             f"{group!r}, which the actor does not declare; declared: "
                             f"{sorted(groups) or 'none'} (concurrency_groups={{...}})")
    out = dict(meta)
    if groups:
        out["concurrency_groups"] = groups
    pending = options.get("max_pending_calls", -1)
    if pending != -1:
        out["max_pending_calls"] = pending
    return out


class _BoundActorClass:
    def __init__(self, actor_class: ActorClass, options: dict):
        self._actor_class = actor_class
        self._options = options

    def remote(self, *args, **kwargs) -> ActorHandle:
        return runtime.backend.create_actor(self._actor_class, args, kwargs, self._options)


class ActorHandle:
    """A handle to an actor; picklable, so it can be passed to tasks and other actors.

    Handles of an unnamed, non-detached actor are counted like ObjectRefs, across
    processes: when the last one is gone the actor finishes the calls already made to it
    and exits (as in Ray). Named and detached actors live until killed (or, non-detached,
    until their creator exits)."""

    def __init__(self, actor_id: bytes, meta: dict, max_task_retries: int = 0, name: str = "",
                 owner: str | None = None):
        self._actor_id = actor_id
        self._meta = meta
        self._max_task_retries = max_task_retries
        self._name = name
        self._owner = owner
        self._core = None
        if owner is not None:
            from raylite.core import runtime

            core = runtime.core
            if core is not None:
                self._core = core
                core.add_local_ref(b"A" + actor_id, owner)

    @property
    def id(self) -> bytes:
        """The key its handle count goes by (beside the object ids of its process)."""
        return b"A" + self._actor_id

    def __del__(self):
        core = self.__dict__.get("_core")
        if core is not None:
            try:
                core.remove_local_ref(b"A" + self._actor_id)
            except Exception:
                pass

    def __getattr__(self, name: str) -> ActorMethod:
        if name.startswith("_") and name not in self._meta["methods"]:
            raise AttributeError(name)
        mopts = self._meta["methods"].get(name)
        if mopts is None:
            raise AttributeError(f"Actor {self._meta['class_name']} has no method {name!r}")
        return ActorMethod(self, name, mopts["num_returns"], mopts.get("concurrency_group"))

    def __reduce__(self):
        if self._owner is not None:  # kept alive by whatever carries it until it lands
            serialization.note_ref_serialized(self)
        return (ActorHandle, (self._actor_id, self._meta, self._max_task_retries, self._name,
                              self._owner))

    def __repr__(self) -> str:
        return f"Actor({self._meta['class_name']}, {self._actor_id.hex()})"

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __eq__(self, other) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    @property
    def _ray_actor_id(self) -> str:
        return self._actor_id.hex()


class ActorMethod:
    def __init__(self, handle: ActorHandle, name: str, num_returns=1,
                 concurrency_group: str | None = None):
        self._handle = handle
        self._name = name
        self._num_returns = num_returns
        self._group = concurrency_group

    def __call__(self, *args, **kwargs):
        raise TypeError(f"Actor methods cannot be called directly; use "
                        f"handle.{self._name}.remote(...).")

    def options(self, **options) -> ActorMethod:
        """Override this call's ``num_returns`` or ``concurrency_group`` (``name`` is
        accepted and ignored: raylite names actor calls by their method). Other keywords
        raise TypeError."""
        opt.check_keywords(options, METHOD_OPTIONS, "an actor method's options")
        group = options.get("concurrency_group", self._group)
        groups = self._handle._meta.get("concurrency_groups") or {}
        if group is not None and group not in groups:
            raise ValueError(f"Unknown concurrency group {group!r} for "
                             f"{self._handle._meta['class_name']}; declared: "
                             f"{sorted(groups) or 'none'}")
        nret = options.get("num_returns")
        return ActorMethod(self._handle, self._name,
                           self._num_returns if nret is None else nret, group)

    def remote(self, *args, **kwargs):
        h = self._handle
        nret = self._num_returns
        if nret == "dynamic":
            nret = "streaming"
        out = require_core().submit_actor_task(
            h._actor_id, self._name, args, kwargs, nret, h._max_task_retries,
            group=self._group, max_pending=h._meta.get("max_pending_calls", -1))
        if isinstance(out, list):
            return out[0] if nret == 1 else out
        return out
