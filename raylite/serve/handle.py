"""Handles: call a deployment from Python (Ray: ``DeploymentHandle``,
``DeploymentResponse``, ``DeploymentResponseGenerator``).

``handle.remote(...)`` returns at once. A ``DeploymentResponse`` can be awaited, read
with ``.result(timeout_s)``, cancelled, or passed into another ``.remote()`` call (the
receiving replica gets its value, resolved before the call runs). With
``handle.options(stream=True)`` the method is a generator and the call returns a
``DeploymentResponseGenerator`` to iterate (sync or async) as values are produced.

As in Ray Serve, a task awaiting a response (or iterating a generator) that is cancelled
cancels the request too, so a request cancelled upstream (its HTTP client went away)
cancels the requests it is waiting on downstream.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import raylite
from raylite.exceptions import GetTimeoutError, TaskCancelledError
from raylite.serve import context
from raylite.serve._private.router import awaitable
from raylite.serve.exceptions import RequestCancelledError


class DeploymentHandle:
    """A picklable handle to a deployment of an application.

    ``handle.method_name.remote(...)`` or ``handle.options(method_name=...)`` calls a
    method other than ``__call__``. Differs from Ray: ``multiplexed_model_id`` and
    locality options are accepted and ignored.
    """

    def __init__(self, deployment_name: str, app_name: str = "default", *,
                 method_name: str = "__call__", stream: bool = False):
        self.deployment_name = deployment_name
        self.app_name = app_name
        self._method = method_name
        self._stream = stream
        self._router = None
        _client_note_handle(self)

    def options(self, *, method_name: str | None = None, stream: bool | None = None,
                **_ignored) -> DeploymentHandle:
        return DeploymentHandle(self.deployment_name, self.app_name,
                                method_name=method_name or self._method,
                                stream=self._stream if stream is None else stream)

    def __getattr__(self, name: str) -> DeploymentHandle:
        if name.startswith("_"):
            raise AttributeError(name)
        return self.options(method_name=name)

    def remote(self, *args, **kwargs):
        router = self._router
        if router is None:
            from raylite.serve._private import client

            router = self._router = client.router_for(self.app_name, self.deployment_name)
        args = tuple(_resolve(a) for a in args)
        kwargs = {k: _resolve(v) for k, v in kwargs.items()}
        method = self._method
        if self._stream:
            def send(actor):
                gen = actor.handle_request_streaming.options(num_returns="streaming").remote(
                    method, *args, **kwargs)
                return gen, gen.completed().future()
            return DeploymentResponseGenerator(router, router.assign(send))

        def send(actor):
            ref = actor.handle_request.remote(method, *args, **kwargs)
            fut = ref.future()
            return (ref, fut), fut
        return DeploymentResponse(router, router.assign(send))

    def __reduce__(self):
        return (_rebuild_handle, (self.deployment_name, self.app_name, self._method,
                                  self._stream))

    def __repr__(self) -> str:
        return (f"DeploymentHandle(deployment={self.deployment_name!r}, "
                f"app={self.app_name!r})")


def _rebuild_handle(deployment, app, method, stream) -> DeploymentHandle:
    return DeploymentHandle(deployment, app, method_name=method, stream=stream)


def _client_note_handle(handle: DeploymentHandle) -> None:
    """Inside a replica, a handle is an edge of the app's topology: report it once."""
    if context._current_replica() is not None:
        from raylite.serve._private import client

        client.report_edge(handle.app_name, handle.deployment_name)


def _resolve(value):
    if isinstance(value, DeploymentResponse):
        return value._to_object_ref_sync()
    if isinstance(value, DeploymentResponseGenerator):
        raise TypeError("A DeploymentResponseGenerator cannot be passed to another call; "
                        "iterate it and pass the values.")
    return value


class _Base:
    def __init__(self, router, assigned: concurrent.futures.Future):
        self._router = router
        self._assigned = assigned
        self._cancelled = False

    def _wait_assigned(self, timeout: float | None):
        try:
            return self._assigned.result(timeout)
        except concurrent.futures.CancelledError:
            raise RequestCancelledError("The request was cancelled.") from None
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"The request was not sent to a replica within {timeout}s "
                               "(all replicas are busy).") from None

    async def _await_assigned(self):
        if self._assigned.done():
            return self._wait_assigned(0)
        try:
            return await awaitable(self._assigned)
        except (asyncio.CancelledError, concurrent.futures.CancelledError):
            if self._assigned.cancelled():
                raise RequestCancelledError("The request was cancelled.") from None
            self.cancel()  # the awaiting task was cancelled: so is the request
            raise

    async def _await_sent(self, cf):
        """Await a future of the sent request; the awaiting task cancelled, the request
        is cancelled too (the future itself is left to resolve)."""
        try:
            return await awaitable(cf)
        except asyncio.CancelledError:
            self.cancel()
            raise

    def cancel(self) -> None:
        """Cancel the request: a queued one is dropped, a running one is interrupted
        (``asyncio.CancelledError`` in the replica); reading it raises
        RequestCancelledError."""
        self._cancelled = True
        if self._router.cancel_pending(self._assigned):
            return
        if self._assigned.done() and not self._assigned.cancelled():
            self._cancel_sent(self._assigned.result()[1])

    def _cancel_sent(self, result) -> None:
        raise NotImplementedError


class DeploymentResponse(_Base):
    """The future result of ``handle.remote()``: ``await`` it, or ``.result()``."""

    def result(self, timeout_s: float | None = None):
        """Block until the result is ready (TimeoutError after ``timeout_s``)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        _slot, (_ref, fut) = self._wait_assigned(timeout_s)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return fut.result(left)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"The request did not finish within {timeout_s}s.") from None
        except TaskCancelledError as e:
            raise RequestCancelledError(str(e)) from None

    def __await__(self):
        return self._get_async().__await__()

    async def _get_async(self):
        _slot, (_ref, fut) = await self._await_assigned()
        try:
            return await self._await_sent(fut)
        except TaskCancelledError as e:
            raise RequestCancelledError(str(e)) from None

    def _cancel_sent(self, result) -> None:
        raylite.cancel(result[0])

    def _to_object_ref_sync(self, timeout_s: float | None = None):
        """The ObjectRef of the result (waits until the request was sent)."""
        return self._wait_assigned(timeout_s)[1][0]

    async def _to_object_ref(self):
        return (await self._await_assigned())[1][0]


class DeploymentResponseGenerator(_Base):
    """The values of a streaming call, as they come: ``for v in gen`` or
    ``async for v in gen``."""

    def __init__(self, router, assigned):
        super().__init__(router, assigned)
        self._gen = None

    def __iter__(self):
        return self

    def __next__(self):
        if self._gen is None:
            self._gen = self._wait_assigned(None)[1]
        ref = next(self._gen)
        try:
            return raylite.get(ref)
        except TaskCancelledError as e:
            raise RequestCancelledError(str(e)) from None
        except GetTimeoutError:  # pragma: no cover - get without timeout
            raise

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self._gen is None:
            self._gen = (await self._await_assigned())[1]
        try:
            ref = await self._gen.__anext__()
        except asyncio.CancelledError:
            self.cancel()
            raise
        try:
            return await self._await_sent(ref.future())
        except TaskCancelledError as e:
            raise RequestCancelledError(str(e)) from None

    def _cancel_sent(self, gen) -> None:
        raylite.cancel(gen.completed())
