"""Long polling: how routers and the proxy learn of replica and route changes without
asking per request (Ray: ``LongPollHost`` / ``LongPollClient``).

The controller keeps a version per key; ``listen`` answers at once with the keys whose
version differs from the caller's, else when one changes (or after a timeout, with
nothing). A client keeps one call outstanding and re-issues it from the call's callback,
so no thread waits on it.
"""

from __future__ import annotations

import asyncio
import logging
import threading

log = logging.getLogger(__name__)

LISTEN_TIMEOUT_S = 30.0


class LongPollHost:
    """The controller's side: values by key, each with a version."""

    def __init__(self):
        self._values: dict[str, object] = {}
        self._versions: dict[str, int] = {}
        self._changed = asyncio.Event()

    def publish(self, key: str, value) -> None:
        if key in self._values and self._values[key] == value:
            return
        self._values[key] = value
        self._versions[key] = self._versions.get(key, 0) + 1
        self._changed.set()
        self._changed = asyncio.Event()

    def get(self, key: str):
        return self._values.get(key)

    def _updates(self, known: dict[str, int]) -> dict:
        return {k: (self._versions[k], self._values[k]) for k, v in known.items()
                if k in self._versions and self._versions[k] != v}

    async def listen(self, known: dict[str, int], timeout: float = LISTEN_TIMEOUT_S) -> dict:
        updates = self._updates(known)
        if updates:
            return updates
        deadline = asyncio.get_running_loop().time() + timeout
        while not updates:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return {}
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                return {}
            updates = self._updates(known)
        return updates


class LongPollClient:
    """One key, followed from any process: ``callback(value)`` runs (on a raylite
    callback thread) whenever the controller publishes a new value."""

    def __init__(self, controller, key: str, callback):
        self._controller = controller
        self._key = key
        self._callback = callback
        self._version = -1
        self._stopped = False
        self._lock = threading.Lock()
        self._poll()

    def stop(self) -> None:
        self._stopped = True

    def _poll(self) -> None:
        if self._stopped:
            return
        try:
            ref = self._controller.listen_for_change.remote({self._key: self._version})
            ref.future().add_done_callback(self._on_answer)
        except Exception:  # the cluster is gone
            self._stopped = True

    def _on_answer(self, fut) -> None:
        try:
            updates = fut.result()
        except Exception as e:  # the controller died (serve.shutdown) or cluster stopped
            log.debug("long poll on %s ended: %r", self._key, e)
            self._stopped = True
            return
        if self._key in updates:
            version, value = updates[self._key]
            with self._lock:
                self._version = version
            try:
                self._callback(value)
            except Exception:
                log.exception("long poll callback for %s failed", self._key)
        self._poll()
