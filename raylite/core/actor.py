"""Actors: ``@raylite.remote`` on a class, actor handles and their methods."""

from __future__ import annotations

import inspect
import sys

from raylite.core import options as opt
from raylite.core import serialization
from raylite.core import serialization as ser
from raylite.core.runtime_api import require_core


def method(*, num_returns=1, concurrency_group=None):
    """Decorate an actor method to set its default ``num_returns`` (Ray: ``ray.method``)."""
    def wrap(fn):
        fn.__raylite_method_options__ = {"num_returns": num_returns}
        return fn
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
    methods["__ray_terminate__"] = {"num_returns": 1}
    return {"class_name": cls.__name__, "methods": methods, "is_async": is_async}


class ActorClass:
    """A class whose instances live in their own worker process.

    ``Cls.remote(*args)`` starts the actor and returns an :class:`ActorHandle` at once
    (construction happens in the background, as in Ray).
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
        return self._create(args, kwargs, self._options)

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
        spec = {
            "cls": self._cls_bytes(), "meta": self._meta, "demand": demand, **extra,
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


class _BoundActorClass:
    def __init__(self, actor_class: ActorClass, options: dict):
        self._actor_class = actor_class
        self._options = options

    def remote(self, *args, **kwargs) -> ActorHandle:
        return self._actor_class._create(args, kwargs, self._options)


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
        return ActorMethod(self, name, mopts["num_returns"])

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
    def __init__(self, handle: ActorHandle, name: str, num_returns=1):
        self._handle = handle
        self._name = name
        self._num_returns = num_returns

    def __call__(self, *args, **kwargs):
        raise TypeError(f"Actor methods cannot be called directly; use "
                        f"handle.{self._name}.remote(...).")

    def options(self, *, num_returns=None, **_ignored) -> ActorMethod:
        return ActorMethod(self._handle, self._name,
                           self._num_returns if num_returns is None else num_returns)

    def remote(self, *args, **kwargs):
        h = self._handle
        nret = self._num_returns
        if nret == "dynamic":
            nret = "streaming"
        out = require_core().submit_actor_task(h._actor_id, self._name, args, kwargs, nret,
                                               h._max_task_retries)
        if isinstance(out, list):
            return out[0] if nret == 1 else out
        return out
