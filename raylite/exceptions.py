"""raylite's exceptions, named as Ray's (``ray.exceptions``).

Every error raised by the runtime is a :class:`RayliteError` (alias ``RayError``).
The error ``get`` raises for a failed task is built by :meth:`RayTaskError.as_instanceof_cause`:
an instance of both ``RayTaskError`` and the user's exception type, so
``except ValueError`` and ``except RayTaskError`` both catch it, and its message carries
the remote traceback.
"""

from __future__ import annotations


class RayliteError(Exception):
    """Base class of every raylite error (Ray: ``RayError``)."""


RayError = RayliteError


class RayTaskError(RayliteError):
    """A task or actor method raised an exception.

    ``cause`` is the user's exception (when it could be pickled), ``traceback_str`` the
    remote traceback, ``function_name`` the task that failed.
    """

    def __init__(self, function_name: str = "", traceback_str: str = "", cause=None,
                 pid: int | None = None, node_id: str | None = None):
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = pid
        self.node_id = node_id
        super().__init__(self._message())

    def _message(self) -> str:
        where = f" (pid={self.pid}, node={self.node_id})" if self.pid else ""
        return f"{self.function_name}(){where} failed:\n{self.traceback_str.rstrip()}"

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self):
        return (RayTaskError, (self.function_name, self.traceback_str, self.cause,
                               self.pid, self.node_id))

    def as_instanceof_cause(self) -> RayTaskError:
        """Return an error that is an instance of both RayTaskError and the cause's type."""
        cause = self.cause
        if cause is None or isinstance(cause, RayTaskError):
            return self
        cause_cls = type(cause)
        if not isinstance(cause, Exception):
            return self
        try:
            cls = _dual_classes.get(cause_cls)
            if cls is None:
                cls = type(f"RayTaskError({cause_cls.__name__})", (RayTaskError, cause_cls),
                           {"__module__": cause_cls.__module__})
                _dual_classes[cause_cls] = cls
            err = cls.__new__(cls)
            err.__dict__.update(getattr(cause, "__dict__", {}))
            err.args = cause.args
            err.function_name = self.function_name
            err.traceback_str = self.traceback_str
            err.cause = cause
            err.pid = self.pid
            err.node_id = self.node_id
            return err
        except TypeError:  # e.g. a cause type with an incompatible layout
            return self


_dual_classes: dict[type, type] = {}


class RayActorError(RayliteError):
    """An actor is dead or unreachable, so its method could not run."""

    def __init__(self, message: str = "The actor died unexpectedly.", actor_id: str | None = None):
        self.actor_id = actor_id
        super().__init__(message)


class ActorDiedError(RayActorError):
    """The actor's process died (crashed, was killed, or its constructor failed)."""


class ActorUnavailableError(RayActorError):
    """The actor is restarting; the call may be retried."""


class WorkerCrashedError(RayliteError):
    """The worker running the task died and the task has no retries left."""


class NodeDiedError(RayliteError):
    """The node running the task died."""


class ObjectLostError(RayliteError):
    """The object's value is gone (its node died and it cannot be rebuilt)."""

    def __init__(self, object_ref_hex: str = "", message: str = ""):
        self.object_ref_hex = object_ref_hex
        super().__init__(message or f"Object {object_ref_hex} is lost.")

    def __reduce__(self):  # rebuilt from its fields, not its message as the ref's hex
        return type(self), (self.object_ref_hex, str(self))


class OwnerDiedError(ObjectLostError):
    """The process that owned the object (created it) died, so its value is gone."""


class ObjectFreedError(ObjectLostError):
    """The object was freed."""


class GetTimeoutError(RayliteError, TimeoutError):
    """``get`` timed out before the objects were ready."""


class TaskCancelledError(RayliteError):
    """The task was cancelled with ``raylite.cancel``."""

    def __init__(self, task_id: str | None = None):
        self.task_id = task_id
        super().__init__(f"Task {task_id} was cancelled." if task_id else "Task was cancelled.")

    def __reduce__(self):  # rebuilt from its id, not its message (which would say it twice)
        return type(self), (self.task_id,)


class ObjectStoreFullError(RayliteError):
    """The object store has no room for the object and nothing can be spilled."""


class OutOfMemoryError(RayliteError):
    """A worker was killed because the machine ran out of memory."""


class RuntimeEnvSetupError(RayliteError):
    """The task's runtime_env could not be set up."""


class ZeroCopyTensorsWarning(UserWarning):
    """A zero-copy torch tensor aliases the object store (treat it as read-only), or a
    tensor had to be copied to be stored (it was not contiguous)."""


class PendingCallsLimitExceeded(RayliteError):
    """An actor call was refused because the caller already has ``max_pending_calls``
    calls to that actor that have not finished (as Ray's)."""


class RayliteSystemError(RayliteError):
    """An internal error of the runtime (a bug, or a lost connection)."""


__all__ = [
    "RayliteError", "RayError", "RayTaskError", "RayActorError", "ActorDiedError",
    "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError", "ObjectLostError",
    "OwnerDiedError", "ObjectFreedError", "GetTimeoutError", "TaskCancelledError",
    "ObjectStoreFullError", "OutOfMemoryError", "RuntimeEnvSetupError", "RayliteSystemError",
    "ZeroCopyTensorsWarning", "PendingCallsLimitExceeded",
]
