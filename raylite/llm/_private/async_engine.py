"""The engine for many async callers: ``AsyncLLMEngine`` runs ``LLMEngine.step()`` on a
thread of its own, as long as there is work, and hands each request's outputs to its
caller's event loop as they come (no batching wait: a token is on its way the moment its
step ends). Callers never block the loop; the engine never waits for callers.

Differs from vLLM's AsyncLLM: one thread in the same process (no separate engine-core
process), so tokenization runs in the caller and the step in the thread; torch releases
the GIL during the math.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import AsyncIterator

from raylite.llm._private.engine import LLMEngine, RequestOutput
from raylite.llm._private.sampling import SamplingParams

log = logging.getLogger(__name__)


class AsyncLLMEngine:
    """``async for out in engine.generate(prompt, params): ...``; leaving the loop early
    (or the task being cancelled, e.g. a client disconnect) aborts the request."""

    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._cv = threading.Condition()
        self._pending: list = []
        self._aborts: list[str] = []
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stop = False
        self._step_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="raylite-llm-engine",
                                        daemon=True)
        self._thread.start()

    @classmethod
    def from_model(cls, model, tokenizer=None, **engine_kwargs) -> AsyncLLMEngine:
        return cls(LLMEngine(model, tokenizer, **engine_kwargs))

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    # ------------------------------------------------------------------ callers
    def add_request(self, request_id: str | None, prompt, params: SamplingParams | None = None
                    ) -> tuple[str, asyncio.Queue]:
        """Queue a request from a running event loop; returns (id, queue of outputs,
        ending with None, or an exception). Raises ValueError for a bad request."""
        rid = request_id or uuid.uuid4().hex
        seq = self.engine.prepare(rid, prompt, params)
        q: asyncio.Queue = asyncio.Queue()
        with self._cv:
            if self._stop:
                raise RuntimeError("the engine is shut down")
            if rid in self._streams:
                raise ValueError(f"request id {rid!r} is already running")
            self._streams[rid] = (asyncio.get_running_loop(), q)
            self._pending.append(seq)
            self._cv.notify()
        return rid, q

    async def generate(self, prompt, params: SamplingParams | None = None,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """The request's outputs as they are produced (each has the new text in
        ``delta_text``); the last one has ``finished=True``."""
        rid, q = self.add_request(request_id, prompt, params)
        finished = False
        try:
            while True:
                item = await q.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self.abort(rid)

    def abort(self, request_id: str) -> None:
        """Stop a request (its blocks are freed before the next step)."""
        with self._cv:
            self._streams.pop(request_id, None)
            self._aborts.append(request_id)
            self._cv.notify()

    def stats(self) -> dict:
        with self._step_lock:
            return self.engine.stats()

    def shutdown(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=10)
        self.engine.shutdown()

    # ------------------------------------------------------------------ the thread
    def _deliver(self, rid: str, item, last: bool = False) -> None:
        entry = self._streams.pop(rid, None) if last else self._streams.get(rid)
        if entry is None:
            return
        loop, q = entry
        try:
            loop.call_soon_threadsafe(q.put_nowait, item)
        except RuntimeError:  # the caller's loop is closed
            self.abort(rid)

    def _deliver_all(self, outs: list) -> None:
        """A step's outputs: one wake-up per caller loop for the whole step (one a
        token cost the loop a wake-up each, 32 a step at 32 streams)."""
        by_loop: dict = {}
        with self._cv:
            for out in outs:
                rid = out.request_id
                entry = self._streams.pop(rid, None) if out.finished else \
                    self._streams.get(rid)
                if entry is not None:
                    by_loop.setdefault(entry[0], []).append((entry[1], out))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # the caller's loop is closed
                for _q, out in items:
                    self.abort(out.request_id)

    def _run(self) -> None:
        eng = self.engine
        while True:
            with self._cv:
                while not (self._stop or self._pending or self._aborts
                           or eng.has_unfinished_requests()):
                    self._cv.wait()
                if self._stop:
                    break
                pending, self._pending = self._pending, []
                aborts, self._aborts = self._aborts, []
            with self._step_lock:
                for seq in pending:
                    try:
                        eng.admit(seq)
                    except Exception as e:  # noqa: BLE001
                        self._deliver(seq.request_id, e, last=True)
                for rid in aborts:
                    eng.abort_request(rid)
                try:
                    outs = eng.step()
                except Exception as e:  # noqa: BLE001 - fail the running requests, go on
                    log.exception("engine step failed")
                    for rid in list(eng._seqs):
                        eng.abort_request(rid)
                        self._deliver(rid, RuntimeError(f"engine step failed: {e}"), last=True)
                    continue
            self._deliver_all(outs)
        with self._cv:
            streams, self._streams = self._streams, {}
        for loop, q in streams.values():
            try:
                loop.call_soon_threadsafe(q.put_nowait, RuntimeError("engine shut down"))
            except RuntimeError:
                pass


def _put_all(items: list) -> None:
    for q, item in items:
        q.put_nowait(item)
