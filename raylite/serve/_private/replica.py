"""A replica: one actor running one copy of a deployment's class (or function).

It is an async raylite actor, so one process serves up to ``max_ongoing_requests``
requests at a time on its event loop (a semaphore enforces the limit even when several
routers send to it). Sync user methods run on the loop, as in Ray by default. It counts
its ongoing requests, pushes the count to the controller when it changes (at most every
100 ms), answers health checks with the user's ``check_health``, applies ``user_config``
through ``reconfigure``, and on shutdown waits for its requests to finish.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os

import cloudpickle

import raylite
from raylite.serve import context
from raylite.serve._private import client, http_util

log = logging.getLogger(__name__)

METRICS_PUSH_S = 0.1
MIN_DRAIN_S = 0.2  # time for routers to learn a replica is going before it checks idleness


class _FunctionDeployment:
    """Wraps a function deployment so it has a ``__call__``. Its ``.bind()`` arguments
    come first in every call, as with ``functools.partial`` (an Application bound there
    arrives as a handle), so a function deployment can compose others. Ray drops a
    function deployment's bind arguments."""

    def __init__(self, fn, *args, **kwargs):
        self._fn = fn
        self._args, self._kwargs = args, kwargs

    def __call__(self, *args, **kwargs):
        return self._fn(*self._args, *args, **{**self._kwargs, **kwargs})


class ReplicaActor:
    def __init__(self, app: str, deployment: str, replica_id: str, spec: dict,
                 config: dict, controller):
        self._app, self._deployment, self._replica_id = app, deployment, replica_id
        self._spec = spec
        self._config = config
        self._controller = controller
        self._user = None
        self._asgi = None
        self._ongoing = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._sem = asyncio.Semaphore(config["max_ongoing_requests"])
        self._streams = http_util.Streams()
        self._metrics_task = None

    # ------------------------------------------------------------------ lifecycle
    async def initialize(self) -> dict:
        """Build the user's object and apply its user_config; returns where we run."""
        client.set_controller(self._controller)
        context._set_replica_context(context.ReplicaContext(
            self._app, self._deployment, self._replica_id))
        target = cloudpickle.loads(self._spec["callable"])
        args, kwargs = cloudpickle.loads(self._spec["init_args"])
        if inspect.isclass(target):
            user = target(*args, **kwargs)
        else:
            user = _FunctionDeployment(target, *args, **kwargs)
        self._user = user
        context._set_replica_context(context.ReplicaContext(
            self._app, self._deployment, self._replica_id, user))
        asgi = getattr(type(user), "__serve_asgi_app__", None)
        if asgi is not None:
            from raylite.serve._private.ingress import bind_app

            self._asgi = bind_app(asgi, user)
        if self._config.get("user_config") is not None:
            await self.reconfigure(self._config["user_config"])
        self._metrics_task = asyncio.get_running_loop().create_task(self._push_metrics())
        ctx = raylite.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "actor_id": ctx.get_actor_id(),
                "pid": os.getpid()}

    async def reconfigure(self, user_config) -> None:
        self._config["user_config"] = user_config
        fn = getattr(self._user, "reconfigure", None)
        if fn is None:
            raise ValueError(f"Deployment {self._deployment!r} has a user_config but no "
                             "reconfigure(self, config) method.")
        await _maybe_await(fn(user_config))

    async def check_health(self) -> None:
        fn = getattr(self._user, "check_health", None)
        if fn is not None:
            await _maybe_await(fn())

    async def prepare_for_shutdown(self, timeout_s: float) -> None:
        """Wait (up to ``timeout_s``) for ongoing requests to finish, then run the
        user's ``__del__`` if it has one."""
        await asyncio.sleep(min(MIN_DRAIN_S, timeout_s))
        try:
            await asyncio.wait_for(self._idle.wait(), max(0.0, timeout_s - MIN_DRAIN_S))
        except asyncio.TimeoutError:
            log.warning("replica %s: %d requests still running at shutdown",
                        self._replica_id, self._ongoing)
        if self._metrics_task is not None:
            self._metrics_task.cancel()
        fn = getattr(type(self._user), "__del__", None)
        if fn is not None:
            try:
                await _maybe_await(fn(self._user))
            except Exception:
                log.exception("__del__ of replica %s failed", self._replica_id)

    def num_ongoing(self) -> int:
        return self._ongoing

    def set_max_ongoing_requests(self, n: int) -> None:
        """A lighter update: requests already admitted keep their slots."""
        self._config["max_ongoing_requests"] = n
        self._sem = asyncio.Semaphore(n)

    async def _push_metrics(self) -> None:
        last = 0
        while True:
            await asyncio.sleep(METRICS_PUSH_S)
            if self._ongoing != last:
                last = self._ongoing
                self._controller.record_replica_metrics.remote(
                    self._app, self._deployment, self._replica_id, last)

    # ------------------------------------------------------------------ requests
    def _begin(self) -> None:
        self._ongoing += 1
        self._idle.clear()

    def _end(self) -> None:
        self._ongoing -= 1
        if self._ongoing == 0:
            self._idle.set()

    def _method(self, name: str):
        fn = getattr(self._user, name, None)
        if fn is None or name.startswith("__") and name != "__call__":
            raise AttributeError(f"Deployment {self._deployment!r} has no method {name!r}")
        return fn

    async def handle_request(self, _serve_method: str, *args, **kwargs):
        self._begin()
        try:
            async with self._sem:
                result = self._method(_serve_method)(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
                if inspect.isgenerator(result) or inspect.isasyncgen(result):
                    raise TypeError(f"Method {_serve_method!r} returned a generator: call it "
                                    "with handle.options(stream=True).")
                return result
        finally:
            self._end()

    async def handle_request_streaming(self, _serve_method: str, *args, **kwargs):
        self._begin()
        try:
            async with self._sem:
                result = self._method(_serve_method)(*args, **kwargs)
                if inspect.isawaitable(result) and not inspect.isasyncgen(result):
                    result = await result
                if inspect.isasyncgen(result):
                    async for item in result:
                        yield item
                elif inspect.isgenerator(result):
                    for item in result:
                        yield item
                else:
                    raise TypeError(f"Method {_serve_method!r} did not return a generator; "
                                    "call it without stream=True.")
        finally:
            self._end()

    async def handle_http(self, scope: dict, body: bytes) -> tuple:
        """One HTTP request: ``(status, headers, body, stream_id)``."""
        self._begin()
        sem = self._sem  # the one to release, even if max_ongoing_requests changes
        await sem.acquire()
        handed_off = False

        def done():
            sem.release()
            self._end()
        try:
            if self._asgi is not None:
                handed_off = True
                return await http_util.run_asgi(self._asgi, scope, body, self._streams, done)
            result = self._user(http_util.make_request(scope, body))
            if inspect.isawaitable(result):
                result = await result
            reply = http_util.plain_reply(result)
            if reply is not None:
                return reply
            handed_off = True
            return await http_util.run_asgi(http_util.as_asgi(result), scope, body,
                                            self._streams, done)
        except Exception as e:
            return http_util.exception_reply(e)
        finally:
            if not handed_off:
                done()

    async def http_stream(self, stream_id: str):
        """The rest of a streamed HTTP body. Cancelled (its client went away) or closed
        early, it cancels the task producing the body, so the user's handler sees
        ``asyncio.CancelledError`` (Ray Serve cancels a request on disconnect too)."""
        entry = self._streams.take(stream_id)
        if entry is None:
            raise KeyError(f"no open stream {stream_id!r}")
        async for chunk in http_util.drain(*entry):
            yield chunk

    def cancel_http_stream(self, stream_id: str) -> bool:
        """Cancel a streamed HTTP response whose client went away (the task producing
        its body gets CancelledError), whether or not its ``http_stream`` has started."""
        return self._streams.cancel(stream_id)


async def _maybe_await(value):
    if inspect.isawaitable(value):
        return await value
    return value
