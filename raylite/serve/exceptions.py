"""Serve's errors, named as Ray's (``ray.serve.exceptions``)."""

from __future__ import annotations

from raylite.exceptions import RayliteError, TaskCancelledError


class RayServeException(RayliteError):
    """Base class of Serve's own errors."""


class BackPressureError(RayServeException):
    """A handle's queue is full (``max_queued_requests``); over HTTP this is a 503."""

    def __init__(self, *, num_queued_requests: int = 0, max_queued_requests: int = 0,
                 deployment: str = ""):
        self.num_queued_requests = num_queued_requests
        self.max_queued_requests = max_queued_requests
        super().__init__(
            f"Request dropped due to backpressure: {num_queued_requests} requests queued for "
            f"deployment {deployment!r} (max_queued_requests={max_queued_requests}).")

    def __reduce__(self):
        return (_backpressure, (self.num_queued_requests, self.max_queued_requests, str(self)))


def _backpressure(queued: int, max_queued: int, message: str) -> BackPressureError:
    err = BackPressureError(num_queued_requests=queued, max_queued_requests=max_queued)
    err.args = (message,)
    return err


class RequestCancelledError(RayServeException, TaskCancelledError):
    """The request was cancelled (``DeploymentResponse.cancel()``)."""


class DeploymentUnavailableError(RayServeException):
    """The deployment has no replica that can take the request (e.g. it failed to deploy)."""
