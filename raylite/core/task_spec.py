"""The task builder: what a task or an actor call is before it is sent, made in one place.

``build_task`` serves both ``CoreWorker.submit_task`` and ``submit_actor_task``: it
encodes the arguments (top-level ObjectRefs become :class:`Dep` placeholders, resolved
before the call runs; refs nested deeper are held by the task until it is done, so the
worker can register as their borrower first), gives the task its id and builds the body
of its EXECUTE / ACTOR_CALL message. What differs between the two (the function or the
method, the lease fields) comes in as body fields.
"""

from __future__ import annotations

from raylite.core import runtime
from raylite.core import serialization as ser
from raylite.core.object_ref import ObjectRef, new_id

NO_ARGS = ("i", ser.pickle.dumps(((), {}), 5), [])


class Dep:
    """Placeholder for a top-level ObjectRef argument, resolved before the task runs."""

    __slots__ = ("i",)

    def __init__(self, i: int):
        self.i = i

    def __reduce__(self):
        return (Dep, (self.i,))


class Task:
    """A task or actor call this process submitted and that has not finished (or that
    finished and is kept as lineage, to rebuild its results)."""

    __slots__ = ("task_id", "key", "body", "deps", "pending", "retries", "retry_exc", "lease",
                 "cancelled", "nret", "fn_id", "fn_bytes", "name", "actor_id", "stream",
                 "sent", "nested", "attempts", "parent")

    def __init__(self):
        self.attempts = 1  # runs started so far (retries add one each)
        self.lease = None  # a normal task's lease, or an actor call's actor, once sent
        self.cancelled = False
        self.pending = 0  # dependencies not ready yet
        self.actor_id = None
        self.key = None  # the scheduling key of a normal task
        self.fn_id = self.fn_bytes = None
        self.retry_exc = False
        self.sent = 0.0
        self.parent = None  # the task that submitted this one here (recursive cancel)


def encode_args(core, args: tuple, kwargs: dict, hold: list | None = None):
    """Serialise arguments; top-level ObjectRefs become placeholders resolved later.
    Refs nested in the arguments go into ``hold``. Returns (descriptor, deps)."""
    if not args and not kwargs:
        return NO_ARGS, ()
    deps = []
    if any(isinstance(a, ObjectRef) for a in args) or \
            any(isinstance(v, ObjectRef) for v in kwargs.values()):
        def sub(v):
            if isinstance(v, ObjectRef):
                deps.append(v)
                return Dep(len(deps) - 1)
            return v
        args = tuple(sub(a) for a in args)
        kwargs = {k: sub(v) for k, v in kwargs.items()}
    if type(args) is tuple and ser.is_plain(args) and ser.is_plain(kwargs):
        return ("i", ser.pickle.dumps((args, kwargs), 5), []), deps
    return core.describe((args, kwargs), hold=hold), deps


def build_task(core, name: str, args, kwargs, nret, retries: int, fields: dict, *,
               actor_id: bytes | None = None) -> Task:
    """A new task (or actor call, with ``actor_id``) with its message body: ``fields``
    (a dict the body is made of, in place) are the body fields of its kind
    (``fn_id``/``name``/``job_id``/``resources`` for a task, ``method`` for a call)."""
    t = Task()
    t.nested = []
    args_desc, t.deps = encode_args(core, args, kwargs, t.nested)
    t.task_id = tid = new_id()
    t.parent = runtime.task_context.cancel_scope
    t.name = name
    t.actor_id = actor_id
    t.retries = retries
    t.stream = nret == "streaming"
    t.nret = 1 if t.stream else nret
    fields["task_id"], fields["args"], fields["nret"] = tid, args_desc, t.nret
    fields["stream"], fields["owner"] = t.stream, core.addr
    t.body = fields
    return t
