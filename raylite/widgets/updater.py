"""The one background thread that keeps every live view up to date.

Events from the cluster's event stream only mark views *dirty*; the updater thread then
asks the head for the state sections the dirty views need, in one round trip, and hands
the same state dict to each of them (a view may add what the head does not hold: the
ServeView reads Serve's status from its controller, on this thread too). Bursts of
events are coalesced: the thread refreshes at most every :data:`MIN_INTERVAL` seconds (4
a second), and a view may ask for less (``view.min_interval``). A slow periodic poll
(``view.poll_interval``) covers anything the events do not announce (resource use, store
use, idle time).

The thread ends when the last view closes, and when ``raylite.shutdown()`` is called: it
notices that the core it was reading through is gone (checked every tick, so within
:data:`MIN_INTERVAL`), tells each view, and stops; it never starts a cluster and never
spins on a dead one (after a failed read it backs off to :data:`BACKOFF` seconds).
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

MIN_INTERVAL = 0.25  # at most 4 refreshes a second, whatever the event rate
BACKOFF = 5.0        # between reads after the head did not answer
READ_TIMEOUT = 5.0   # one state read gives up after this long

_lock = threading.Lock()
_updater: Updater | None = None


class Updater:
    """Refreshes its views from one event subscription and one state read per tick."""

    def __init__(self, core):
        self.core = core
        self.views: list = []
        self.dirty: set = set()
        self.stream = None
        self.stream_topics: frozenset = frozenset()
        self.failures = 0
        self._cv = threading.Condition()
        self._sub_lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="raylite-widgets", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopped

    def add(self, view) -> bool:
        """Take ``view`` on; False when this updater has already stopped. Subscribes to
        the view's topics first (in the caller's thread), so that nothing that happens
        after the view is made goes unseen."""
        self._subscribe(view.topics)
        with self._cv:
            if self._stopped:
                return False
            self.views.append(view)
            self._cv.notify()
            if self._thread.ident is None:  # started with its first view
                self._thread.start()
            return True

    def remove(self, view) -> None:
        with self._cv:
            if view in self.views:
                self.views.remove(view)
            self.dirty.discard(view)
            self._cv.notify()

    def mark(self, views=None) -> None:
        """Ask for a refresh of ``views`` (all by default) at the next tick."""
        with self._cv:
            self.dirty.update(self.views if views is None else views)
            self._cv.notify()

    # ---------------------------------------------------------------- the thread
    def _on_event(self, topic: str, body: dict) -> None:
        """On the event stream's thread: let views note the event, then mark them."""
        with self._cv:
            views = [v for v in self.views if topic in v.topics]
        hit = [v for v in views if v._on_event(topic, body)]
        if hit:
            self.mark(hit)

    def _run(self) -> None:
        from raylite.util.state import current_session

        reason = None
        try:
            last = 0.0
            while True:
                with self._cv:
                    self._cv.wait(timeout=MIN_INTERVAL)
                    if self._stopped or not self.views:
                        self._stopped = True  # under the lock: add() now says no
                        break
                    views, dirty = list(self.views), set(self.dirty)
                if current_session() is not self.core:
                    reason = "raylite.shutdown() was called; showing the last state"
                    break
                now = time.monotonic()
                wait = BACKOFF if self.failures else MIN_INTERVAL
                if now - last < wait:
                    continue
                due = [v for v in views if now - v._last_refresh >= v.min_interval and
                       (v in dirty or now - v._last_refresh >= v.poll_interval)]
                if not due:
                    continue
                last = now
                self._refresh(due)
        except Exception:  # never let the thread die silently with views still live
            log.exception("raylite widgets updater failed")
            reason = "the widgets' updater failed (see the log)"
        finally:
            with self._cv:
                self._stopped = True
            with self._sub_lock:
                if self.stream is not None:
                    self.stream.close()
            with self._cv:
                views, self.views = list(self.views), []
            for v in views:
                v._detached(reason or "stopped")

    def _refresh(self, views) -> None:
        from raylite.util.state import get_state

        sections = sorted({s for v in views for s in v.sections})
        try:  # views that need no head state (a ServeView) skip the round trip
            state = get_state(*sections, session=self.core, timeout=READ_TIMEOUT) if sections \
                else {"time": time.time()}
        except Exception as e:
            self.failures += 1
            for v in views:
                v._set_status(f"cannot read the cluster state: {e}")
            return
        self.failures = 0
        with self._cv:
            self.dirty.difference_update(views)
        for v in views:
            try:
                v._apply(v._extend(state))
                if v._status != "live":  # e.g. after "cannot read the cluster state"
                    v._set_status("live")
            except Exception:
                log.exception("raylite widget %s failed to update", type(v).__name__)

    def _subscribe(self, topics) -> None:
        """One event stream for all views, reopened when a view needs more topics."""
        with self._sub_lock:
            want = frozenset(topics)
            if want <= self.stream_topics or self._stopped:
                return
            from raylite.util.state import EventStream

            old, topics = self.stream, self.stream_topics | want
            try:
                self.stream = EventStream(sorted(topics), callback=self._on_event,
                                          session=self.core)
            except Exception as e:  # views still refresh by polling
                log.warning("raylite widgets: no event stream (%s); polling only", e)
                self.stream = None
            self.stream_topics = topics
            if old is not None:
                old.close()


def attach(view) -> Updater | None:
    """Register a live view with the shared updater (started on first use, or again
    after a shutdown and a new ``init``); None when raylite is not initialized."""
    global _updater
    from raylite.util.state import current_session

    with _lock:
        core = current_session()
        if core is None:
            return None
        if _updater is None or _updater.core is not core or not _updater.add(view):
            _updater = Updater(core)
            _updater.add(view)
        return _updater


def detach(view) -> None:
    """Unregister a view; the thread ends by itself when no view is left."""
    with _lock:
        up = _updater
    if up is not None:
        up.remove(view)


def current() -> Updater | None:
    """The running updater, if any (tests use it to check that threads end)."""
    return _updater if _updater is not None and _updater.alive else None
