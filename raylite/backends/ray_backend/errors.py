"""Ray's exceptions as raylite's: what ``get``, ``wait``, ``kill`` and friends raise on
the Ray backend is an instance of the ``raylite.exceptions`` type of the same name (a
failed task's error is still also an instance of the user's exception type), so code
that catches raylite's errors runs unchanged on Ray. The Ray exception stays attached as
``__cause__``."""

from __future__ import annotations

import re

import ray.exceptions as rx

from raylite import exceptions as rl

# most specific first: an error takes the first entry it is an instance of
_TABLE: list[tuple[type, type]] = [
    (rx.GetTimeoutError, rl.GetTimeoutError),
    (rx.TaskCancelledError, rl.TaskCancelledError),
    (rx.ActorUnavailableError, rl.ActorUnavailableError),
    (rx.ActorDiedError, rl.ActorDiedError),
    (rx.RayActorError, rl.RayActorError),
    (rx.OwnerDiedError, rl.OwnerDiedError),
    (rx.ObjectFreedError, rl.ObjectFreedError),
    (rx.ObjectLostError, rl.ObjectLostError),
    (rx.ObjectStoreFullError, rl.ObjectStoreFullError),
    (rx.OutOfMemoryError, rl.OutOfMemoryError),
    (rx.WorkerCrashedError, rl.WorkerCrashedError),
    (rx.NodeDiedError, rl.NodeDiedError),
    (rx.RuntimeEnvSetupError, rl.RuntimeEnvSetupError),
    (rx.PendingCallsLimitExceeded, rl.PendingCallsLimitExceeded),
    (rx.RaySystemError, rl.RayliteSystemError),
]


def to_raylite(err: BaseException) -> BaseException:
    """The raylite exception for a Ray one (``err`` itself when it is not Ray's)."""
    if isinstance(err, rx.RayTaskError):
        return _task_error(err)
    if not isinstance(err, rx.RayError):
        return err
    for ray_type, ours in _TABLE:
        if isinstance(err, ray_type):
            return _build(ours, err)
    return rl.RayliteError(str(err))


def _build(ours: type, err: BaseException) -> BaseException:
    if issubclass(ours, rl.ObjectLostError):
        ref = getattr(err, "object_ref_hex", "") or ""
        return ours(ref, str(err))
    if issubclass(ours, rl.RayActorError):
        actor_id = getattr(err, "actor_id", None)
        return ours(str(err), actor_id if isinstance(actor_id, str) else None)
    if ours is rl.TaskCancelledError:
        task_id = getattr(err, "task_id", None)
        return ours(task_id.hex() if hasattr(task_id, "hex") else task_id)
    return ours(str(err))


_FUNCTION = re.compile(r"ray::([\w.<>]+)\(")


def _task_error(err) -> BaseException:
    """Ray's RayTaskError(T) as raylite's RayTaskError(T). Ray's dual error keeps only
    its message and ``cause`` reliably; the function's name is read from the message."""
    cause = err.__dict__.get("cause")
    if isinstance(cause, rx.RayError):  # e.g. a task that got a dead actor's error
        cause = to_raylite(cause)
    if isinstance(cause, rl.RayTaskError):  # raised by a nested get: its user error
        cause = cause.cause
    text = str(err)
    name = _FUNCTION.search(text)
    wrapped = rl.RayTaskError(name.group(1) if name else "", text, cause)
    return wrapped.as_instanceof_cause()


def reraise(err: BaseException):
    """Raise the raylite form of ``err`` (chained to it)."""
    mapped = to_raylite(err)
    if mapped is err:
        raise err
    raise mapped from err
