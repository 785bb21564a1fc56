"""The router behind every handle: picks a replica per request (power of two choices
under ``max_ongoing_requests``), queues when all are full, pushes back past
``max_queued_requests``, and reports its queue to the controller for autoscaling.

One router per deployment per process, shared by all handles to it. The replica set
arrives by long poll, so routing a request costs no round trip to the controller. A
request that finds room is sent from the caller's thread at once; a queued one is sent
from the completion callback of the request that frees a slot.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from concurrent.futures import Future

from raylite.exceptions import RayActorError
from raylite.serve._private.long_poll import LongPollClient
from raylite.serve._private.policy import choose_replica
from raylite.serve.exceptions import BackPressureError, DeploymentUnavailableError

log = logging.getLogger(__name__)

METRICS_PUSH_S = 0.1      # how often a router reports a changed queue length
METRICS_REFRESH_S = 1.0   # ... and re-reports a non-empty one (the controller expires it)


class _Slot:
    """A replica as one router sees it."""

    __slots__ = ("replica_id", "actor", "inflight")

    def __init__(self, replica_id: str, actor):
        self.replica_id = replica_id
        self.actor = actor
        self.inflight = 0


class _Pending:
    __slots__ = ("send", "future")

    def __init__(self, send, future: Future):
        self.send = send
        self.future = future


def replicas_key(app: str, deployment: str) -> str:
    return f"replicas:{app}/{deployment}"


class Router:
    """Routes requests of one deployment to its replicas."""

    def __init__(self, controller, app: str, deployment: str):
        self.app = app
        self.deployment = deployment
        self.router_id = f"{os.getpid()}-{id(self):x}"
        self._controller = controller
        self._lock = threading.Lock()
        self._slots: list[_Slot] = []
        self._max_ongoing = 5
        self._max_queued = -1
        self._queue: collections.deque[_Pending] = collections.deque()
        self._known = False  # replica set received at least once
        self._error = None  # why the deployment cannot take requests (deleted, failed)
        self._pushed = (0, 0.0)  # (queued, time) last reported
        self._poll = LongPollClient(controller, replicas_key(app, deployment), self._update)

    # ------------------------------------------------------------------ replica set
    def _update(self, value: dict) -> None:
        with self._lock:
            old = {s.replica_id: s for s in self._slots}
            self._slots = [old.get(rid) or _Slot(rid, actor) for rid, actor in value["replicas"]]
            self._max_ongoing = value["max_ongoing_requests"]
            self._max_queued = value["max_queued_requests"]
            self._error = value.get("error")
            self._known = True
            ready = self._take_ready()
            failed = []
            if self._error and not self._slots:
                failed, self._queue = list(self._queue), collections.deque()
        self._send_all(ready)
        for pending in failed:
            pending.future.set_exception(DeploymentUnavailableError(self._error))

    def stop(self) -> None:
        self._poll.stop()

    # ------------------------------------------------------------------ routing
    def assign(self, send) -> Future:
        """Send a request to a replica now or once one has room.

        ``send(actor) -> (result, done_future)`` makes the actor call; the returned Future
        resolves to ``(slot, result)`` when it was made. Raises BackPressureError when the
        queue is at ``max_queued_requests``.
        """
        fut: Future = Future()
        with self._lock:
            slot = self._pick() if not self._queue else None
            if slot is None:
                if self._error and not self._slots:
                    raise DeploymentUnavailableError(self._error)
                if 0 <= self._max_queued <= len(self._queue):
                    raise BackPressureError(num_queued_requests=len(self._queue),
                                            max_queued_requests=self._max_queued,
                                            deployment=self.deployment)
                self._queue.append(_Pending(send, fut))
                queued = len(self._queue)
            else:
                slot.inflight += 1
        if slot is None:
            self._maybe_push(queued, urgent=not self._slots)
            _ensure_ticker()
            return fut
        self._send(slot, _Pending(send, fut))
        return fut

    def _pick(self) -> _Slot | None:
        slots = self._slots
        i = choose_replica([s.inflight for s in slots], self._max_ongoing)
        return None if i is None else slots[i]

    def _take_ready(self) -> list:
        """Queued requests that now have a replica (lock held)."""
        out = []
        while self._queue:
            slot = self._pick()
            if slot is None:
                break
            slot.inflight += 1
            out.append((slot, self._queue.popleft()))
        return out

    def _send_all(self, ready: list) -> None:
        for slot, pending in ready:
            self._send(slot, pending)

    def _send(self, slot: _Slot, pending: _Pending) -> None:
        if pending.future.cancelled():
            self._release(slot)
            return
        try:
            result, done = pending.send(slot.actor)
        except BaseException as e:  # noqa: BLE001
            self._release(slot)
            pending.future.set_exception(e)
            return
        done.add_done_callback(lambda f: self._release(slot, f))
        pending.future.set_result((slot, result))

    def _release(self, slot: _Slot, done: Future | None = None) -> None:
        with self._lock:
            slot.inflight -= 1
            if done is not None and not done.cancelled() and \
                    isinstance(done.exception(), RayActorError) and \
                    slot in self._slots:  # the replica died: stop sending to it
                self._slots = [s for s in self._slots if s is not slot]
            ready = self._take_ready() if self._queue else ()
        if ready:
            self._send_all(ready)

    def cancel_pending(self, fut: Future) -> bool:
        """Drop a queued request; False if it was already sent."""
        with self._lock:
            for p in self._queue:
                if p.future is fut:
                    self._queue.remove(p)
                    return fut.cancel()
        return False

    # ------------------------------------------------------------------ metrics
    def queued(self) -> int:
        return len(self._queue)

    def _maybe_push(self, queued: int, urgent: bool = False) -> None:
        last, when = self._pushed
        now = time.monotonic()
        if queued == last and (queued == 0 or now - when < METRICS_REFRESH_S):
            return
        if not urgent and now - when < METRICS_PUSH_S:
            return
        self._pushed = (queued, now)
        try:
            self._controller.record_handle_metrics.remote(
                self.app, self.deployment, self.router_id, queued)
        except Exception:
            pass

    def tick(self) -> None:
        self._maybe_push(len(self._queue))


def awaitable(cf: Future):
    """An asyncio future on the running loop that takes ``cf``'s outcome; cancelling it
    leaves ``cf`` alone (raylite resolves its futures later, from its IO thread, and
    cleanup after a cancel may need the value). One future and one callback: cheaper
    than ``asyncio.shield(asyncio.wrap_future(cf))``."""
    import asyncio

    loop = asyncio.get_running_loop()
    af = loop.create_future()
    if cf.done():
        _copy_outcome(cf, af)
    else:
        cf.add_done_callback(lambda f: loop.call_soon_threadsafe(_copy_outcome, f, af))
    return af


def _copy_outcome(cf: Future, af) -> None:
    if af.done():
        return
    if cf.cancelled():
        af.cancel()
    elif cf.exception() is not None:
        af.set_exception(cf.exception())
    else:
        af.set_result(cf.result())


# ---------------------------------------------------------------------- registry
_routers: dict[tuple[str, str], Router] = {}
_registry_lock = threading.Lock()
_ticker: threading.Thread | None = None


def get_router(controller, app: str, deployment: str) -> Router:
    key = (app, deployment)
    router = _routers.get(key)
    if router is None:
        with _registry_lock:
            router = _routers.get(key)
            if router is None:
                router = _routers[key] = Router(controller, app, deployment)
    return router


def reset_routers() -> None:
    """Forget every router (serve.shutdown, or a new cluster in this process)."""
    with _registry_lock:
        for r in _routers.values():
            r.stop()
        _routers.clear()


def _ensure_ticker() -> None:
    """A daemon thread that keeps queue lengths reported while requests wait."""
    global _ticker
    if _ticker is not None and _ticker.is_alive():
        return
    with _registry_lock:
        if _ticker is not None and _ticker.is_alive():
            return
        _ticker = threading.Thread(target=_tick_forever, name="raylite-serve-router",
                                   daemon=True)
        _ticker.start()


def _tick_forever() -> None:
    while True:
        time.sleep(METRICS_PUSH_S)
        for r in list(_routers.values()):
            try:
                r.tick()
            except Exception:
                log.debug("router tick failed", exc_info=True)
