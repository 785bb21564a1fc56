"""The HTTP proxy: an actor running uvicorn (uvloop + httptools when installed) on its
own thread, forwarding each request to a replica of the matching application's ingress.

Routes (``route_prefix -> app``) and replica sets arrive by long poll, so the hot path
is: parse, longest-prefix match, pick a replica (power of two choices), one async actor
call awaited on uvicorn's loop, write the answer. A missing route is a 404, an error in a
replica a 500 with its text, a full queue a 503; the proxy itself stays up. The REST API
(``rest.py``) is served here too.

A client that disconnects cancels its request, as in Ray Serve: a task per request waits
for uvicorn's ``http.disconnect`` and cancels the forwarding, which cancels whatever it
was waiting on (the queued assignment, the replica call, or the streaming call through
``raylite.cancel``); the replica's handler gets ``asyncio.CancelledError``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from functools import partial

import raylite
from raylite.serve._private import client, http_util, rest
from raylite.serve._private.long_poll import LongPollClient
from raylite.serve._private.router import awaitable, get_router
from raylite.serve.exceptions import BackPressureError, DeploymentUnavailableError

log = logging.getLogger(__name__)

ROUTES_KEY = "routes"


def _reply(status: int, body: bytes, content_type: bytes = b"text/plain; charset=utf-8"):
    return {"type": "http.response.start", "status": status,
            "headers": [(b"content-type", content_type),
                        (b"content-length", str(len(body)).encode())]}, body


async def send_simple(send, status: int, text: str) -> None:
    start, body = _reply(status, text.encode())
    await send(start)
    await send({"type": "http.response.body", "body": body})


class HTTPProxy:
    """The ASGI app uvicorn runs."""

    def __init__(self, controller, root_path: str = "", request_timeout_s=None):
        self.controller = controller  # the Serve controller (rest.py asks it too)
        self._root_path = root_path.rstrip("/")
        self._timeout = request_timeout_s
        self._routes: list[tuple[str, str, str]] = []  # (prefix, app, ingress), longest first
        self._poll = LongPollClient(controller, ROUTES_KEY, self._set_routes)
        self.token = raylite.get_runtime_context().get_cluster_token()  # for rest.py

    def _set_routes(self, routes: dict) -> None:
        self._routes = sorted(((p, a, d) for p, (a, d) in routes.items()),
                              key=lambda r: -len(r[0]))

    def route_table(self) -> dict:
        return {p: a for p, a, _ in self._routes}

    def match(self, path: str):
        for prefix, app, dep in self._routes:
            if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
                return prefix, app, dep
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1003})
            return
        path = scope["path"]
        if self._root_path and path.startswith(self._root_path):
            path = path[len(self._root_path):] or "/"
        if path.startswith(("/api/", "/-/")) and await rest.handle(self, path, scope,
                                                                    receive, send):
            return
        m = self.match(path)
        if m is None:
            await send_simple(send, 404, f"Path '{path}' not found. Routes: "
                              f"{self.route_table()}")
            return
        prefix, app, dep = m
        body = await http_util.read_body(receive)
        if body is None:
            return  # the client went away
        req_scope = {
            # spec 2.4: a StreamingResponse streams without a disconnect-listener task
            # (the proxy watches for the disconnect and cancels the app instead)
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": scope["http_version"],
            "method": scope["method"], "scheme": scope.get("scheme", "http"),
            "path": scope["path"], "raw_path": scope.get("raw_path"),
            "query_string": scope.get("query_string", b""),
            "root_path": self._root_path + ("" if prefix == "/" else prefix),
            "headers": scope["headers"], "client": scope.get("client"),
            "server": scope.get("server"), "extensions": {},
        }
        me = asyncio.current_task()
        watching = True
        gone = asyncio.get_running_loop().create_task(http_util.wait_disconnect(receive))
        gone.add_done_callback(lambda w: watching and not w.cancelled() and me.cancel())
        try:
            if self._timeout is None:
                await self._forward(app, dep, req_scope, body, send)
            else:
                await asyncio.wait_for(self._forward(app, dep, req_scope, body, send),
                                       self._timeout)
        except asyncio.TimeoutError:
            await send_simple(send, 408, f"Request timed out after {self._timeout}s.")
        except (BackPressureError, DeploymentUnavailableError) as e:
            await send_simple(send, 503, str(e))
        except asyncio.CancelledError:
            if not (gone.done() and not gone.cancelled()):
                raise  # cancelled for another reason (the server stopping)
            me.uncancel()  # the client went away: its request was cancelled, all done
        finally:
            # not cancelled: once the response is complete uvicorn answers the watcher's
            # receive() with http.disconnect, so it ends by itself (a cancel costs more)
            watching = False

    async def _forward(self, app: str, dep: str, scope: dict, body: bytes, send) -> None:
        """Send the request to a replica and its answer to the client. Cancelled (the
        client went away, or the timeout), it cancels the request where it is."""
        router = get_router(self.controller, app, dep)

        def call(actor):
            ref = actor.handle_http.remote(scope, body)
            fut = ref.future()
            return (ref, fut), fut
        assigned = router.assign(call)
        if not assigned.done():
            try:
                await awaitable(assigned)
            except asyncio.CancelledError:
                if not router.cancel_pending(assigned):  # sent meanwhile: cancel there
                    assigned.add_done_callback(_on_loop(_cancel_assigned))
                raise
        slot, (ref, fut) = assigned.result()
        try:
            status, headers, payload, stream_id = await awaitable(fut)
        except asyncio.CancelledError:
            raylite.cancel(ref)
            fut.add_done_callback(_on_loop(partial(_cancel_unread, slot.actor)))
            raise
        except Exception as e:  # the replica died, or the call failed outside user code
            await send_simple(send, 500, f"Internal Server Error\n{e}")
            return
        if stream_id is None:
            headers = list(headers)
            if not any(k.lower() == b"content-length" for k, _ in headers):
                headers.append((b"content-length", str(len(payload)).encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            return
        gen = None
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            if payload:
                await send({"type": "http.response.body", "body": payload, "more_body": True})
            gen = slot.actor.http_stream.options(num_returns="streaming").remote(stream_id)
            async for item in gen:
                fut = item.future()  # an item that has arrived is usually read already
                chunk = fut.result() if fut.done() else await awaitable(fut)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except asyncio.CancelledError:
            if gen is not None:
                raylite.cancel(gen.completed())  # the streaming call ends
            # and the body's producer stops: also when the cancel reached the replica
            # before its http_stream call had started (which raylite.cancel can miss)
            slot.actor.cancel_http_stream.remote(stream_id)
            raise
        except Exception as e:  # the body is half sent: end it, the client sees it cut
            log.warning("stream from %s/%s failed: %s", app, dep, e)
        await send({"type": "http.response.body", "body": b""})


def _on_loop(fn):
    """A done-callback for a concurrent future that runs ``fn(future)`` on this event
    loop (raylite may resolve futures on its IO thread, where nothing may block)."""
    loop = asyncio.get_running_loop()
    return lambda f: loop.call_soon_threadsafe(fn, f)


def _cancel_assigned(assigned) -> None:
    """The request was sent after its client went away: cancel it there."""
    if not assigned.cancelled() and assigned.exception() is None:
        slot, (ref, fut) = assigned.result()
        raylite.cancel(ref)
        fut.add_done_callback(_on_loop(partial(_cancel_unread, slot.actor)))


def _cancel_unread(actor, fut) -> None:
    """The reply came after its request was cancelled: a stream it opened is dropped."""
    if not fut.cancelled() and fut.exception() is None and fut.result()[3] is not None:
        actor.cancel_http_stream.remote(fut.result()[3])


class ProxyActor:
    """Hosts the HTTP server (a sync actor: its methods run on the actor's main thread,
    uvicorn on another)."""

    def __init__(self, controller, http_options: dict):
        import uvicorn

        client.set_controller(controller)
        host, port = http_options["host"], http_options["port"]
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            sock.close()
            raise OSError(f"Serve's HTTP proxy cannot listen on {host}:{port}: {e}") from None
        sock.listen(2048)
        sock.set_inheritable(True)
        self._sock = sock
        self._port = sock.getsockname()[1]
        self._host = host
        self.app = HTTPProxy(controller, http_options.get("root_path") or "",
                             http_options.get("request_timeout_s"))
        config = uvicorn.Config(
            self.app, loop=_pick("uvloop", "asyncio"), http=_pick("httptools", "h11"),
            log_level="warning", access_log=False, lifespan="off", interface="asgi3",
            timeout_keep_alive=int(http_options.get("keep_alive_timeout_s") or 5))
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="raylite-serve-http", daemon=True)
        self._thread.start()

    def ready(self, timeout_s: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("Serve's HTTP server exited while starting")
            if time.monotonic() > deadline:
                raise TimeoutError("Serve's HTTP server did not start")
            time.sleep(0.005)
        return {"host": self._host, "port": self._port, "pid": os.getpid(),
                "node_id": raylite.get_runtime_context().get_node_id(),
                "actor_id": raylite.get_runtime_context().get_actor_id()}

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)


def _pick(preferred: str, fallback: str) -> str:
    try:
        __import__(preferred)
        return preferred
    except ImportError:
        return fallback
