"""HTTP inside a replica: the request the user's code sees, and turning what it returns
(a value, a starlette Response, a generator, or a whole ASGI app's output) into what the
proxy sends back.

A reply is ``(status, headers, body, stream_id)``. A response whose body comes in more
than one piece (``StreamingResponse``, a generator) answers with its first piece and a
``stream_id``; the proxy then reads the rest from the replica's ``http_stream``. So an
ordinary request costs one actor call, and only streaming pays for a stream.

A request whose client goes away is cancelled (as in Ray Serve): the proxy cancels its
actor call, and the task running the ASGI app (the user's handler or its response's
body) gets ``asyncio.CancelledError``; so does a stream nobody reads any more.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import traceback

TEXT = [(b"content-type", b"text/plain; charset=utf-8")]
JSON = [(b"content-type", b"application/json")]


async def read_body(receive) -> bytes | None:
    """The whole body of an ASGI request (None when the client went away first)."""
    parts = []
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        parts.append(msg.get("body", b""))
        if not msg.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


async def wait_disconnect(receive) -> None:
    """Return when the client has gone (or the response is complete: uvicorn answers
    ``http.disconnect`` to either, so stop waiting once the response is sent)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def make_request(scope: dict, body: bytes):
    """A starlette Request over the proxy's scope and the already-read body."""
    from starlette.requests import Request

    return Request(scope, _receiver(body))


def _receiver(body: bytes):
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # a disconnect never comes: the body was complete
    return receive


def error_reply(status: int, message: str) -> tuple:
    return (status, TEXT, message.encode(), None)


def exception_reply(e: BaseException) -> tuple:
    """500 with the error's traceback; 400 when the request body was not valid JSON
    (raylite: Ray answers 500 for that too)."""
    if isinstance(e, json.JSONDecodeError):
        return error_reply(400, f"Malformed JSON in the request body: {e}")
    text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    return error_reply(500, f"Internal Server Error\n{text}")


def plain_reply(result) -> tuple | None:
    """A reply for a plain return value; None when it must run as an ASGI response."""
    if isinstance(result, (bytes, bytearray, memoryview)):
        return (200, [(b"content-type", b"application/octet-stream")], bytes(result), None)
    if isinstance(result, str):
        return (200, TEXT, result.encode(), None)
    if result is None:
        return (200, TEXT, b"", None)
    status = getattr(result, "status_code", None)
    if status is not None and hasattr(result, "raw_headers") and callable(result):
        if hasattr(result, "body") and getattr(result, "background", None) is None:
            return (status, list(result.raw_headers), bytes(result.body), None)
        return None  # a StreamingResponse / FileResponse / one with background tasks
    if inspect.isgenerator(result) or inspect.isasyncgen(result):
        return None
    return (200, JSON, json.dumps(result).encode(), None)


def as_asgi(result):
    """An ASGI app that answers with ``result`` (a Response or a generator)."""
    if callable(result) and hasattr(result, "status_code"):
        return result
    from starlette.responses import StreamingResponse

    return StreamingResponse(result, media_type="text/plain")


class Streams:
    """Bodies still being produced, by stream id: a queue of pieces for ``http_stream``
    to drain and the task producing them, kept while it runs, so the stream can be
    cancelled whether or not its reader has started."""

    UNREAD_S = 300.0  # a stream not taken by then is cancelled

    def __init__(self):
        self._unread: dict[str, tuple[asyncio.Queue, asyncio.Task]] = {}
        self._running: dict[str, asyncio.Task] = {}
        self._next = 0

    def open(self, task: asyncio.Task) -> tuple[str, asyncio.Queue]:
        self._next += 1
        sid = str(self._next)
        q: asyncio.Queue = asyncio.Queue()
        self._unread[sid] = (q, task)
        self._running[sid] = task
        task.add_done_callback(lambda _: self._running.pop(sid, None))
        asyncio.get_running_loop().call_later(
            self.UNREAD_S, lambda: sid in self._unread and self.cancel(sid))
        return sid, q

    def take(self, sid: str) -> tuple[asyncio.Queue, asyncio.Task] | None:
        """The stream's queue and producer (which may have finished already)."""
        return self._unread.pop(sid, None)

    def cancel(self, sid: str) -> bool:
        """Cancel the task producing a stream (read or not); False if it has ended."""
        self._unread.pop(sid, None)
        task = self._running.pop(sid, None)
        if task is not None:
            task.cancel()
        return task is not None


_END = object()


async def run_asgi(app, scope: dict, body: bytes, streams: Streams, on_done) -> tuple:
    """Run an ASGI app on one request. Returns the reply once the response is complete,
    or, if its body comes in pieces, once the first piece is there (the rest goes to a
    stream); ``on_done()`` runs when the app has finished either way. Cancelled before
    the reply, it cancels the app's task (the client went away)."""
    loop = asyncio.get_running_loop()
    head: asyncio.Future = loop.create_future()
    start = {}
    parts: list[bytes] = []
    queue = None

    async def send(msg):
        nonlocal queue
        kind = msg["type"]
        if kind == "http.response.start":
            start["status"] = msg["status"]
            start["headers"] = [(bytes(k), bytes(v)) for k, v in msg.get("headers", ())]
            return
        if kind != "http.response.body":
            return
        chunk = bytes(msg.get("body", b""))
        more = msg.get("more_body", False)
        if queue is not None:
            if chunk:
                queue.put_nowait(chunk)
            if not more:
                queue.put_nowait(_END)
            return
        parts.append(chunk)
        if not more:
            if not head.done():
                head.set_result((start.get("status", 200), start.get("headers", []),
                                 b"".join(parts), None))
            return
        sid, queue = streams.open(task)
        if not head.done():
            head.set_result((start.get("status", 200), start.get("headers", []),
                             b"".join(parts), sid))

    async def main():
        try:
            await app(scope, _receiver(body), send)
        except BaseException as e:  # noqa: BLE001
            if not head.done():
                head.set_result(exception_reply(e))
            elif queue is not None:
                queue.put_nowait(e)
        finally:
            if not head.done():
                head.set_result(error_reply(500, "The ASGI app returned without a response."))
            if queue is not None:
                queue.put_nowait(_END)
            on_done()

    task = loop.create_task(main())
    try:
        return await head
    except asyncio.CancelledError:
        task.cancel()
        raise


async def drain(queue: asyncio.Queue, task: asyncio.Task):
    """The rest of a streamed body: every piece ready is yielded joined in one (so a
    burst costs one message to the proxy, and the first piece never waits). Left early
    (the reader was cancelled or stopped), it cancels the task producing the body."""
    ended = False
    try:
        while True:
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            end = None
            for i, item in enumerate(items):
                if item is _END or isinstance(item, BaseException):
                    end, items = item, items[:i]
                    break
            if end is not None:
                ended = True
            if items:
                yield items[0] if len(items) == 1 else b"".join(items)
            if end is _END:
                return
            if end is not None:
                raise end
    finally:
        if not ended:
            task.cancel()  # the body will not be read: stop making it
