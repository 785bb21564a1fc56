"""What every view shares: built once, updated by setting values, a static fallback.

A view holds an ipywidgets tree (``view.widget``) built once in its constructor; each
refresh renders HTML strings with the pure functions of ``render*.py`` and assigns a
widget's ``value`` only when its string changed, so the page never redraws what did not
change. Without ipywidgets (or in a frontend that cannot show widgets: GitHub, nbviewer,
a terminal) the same renderers give static HTML (``_repr_html_``, and a ``text/html``
entry beside the widget in ``_repr_mimebundle_``) and a text summary (``__repr__``).
"""

from __future__ import annotations

import threading
import time

from raylite.widgets import render as R
from raylite.widgets import updater

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
READ_STEP_S = 0.25  # a read waiting on an actor checks this often whether raylite was shut down


def ipywidgets():
    """The ipywidgets module, or None when it is not installed."""
    try:
        import ipywidgets as w
    except ImportError:
        return None
    return w


def set_value(widget, value: str) -> None:
    """Assign only a changed value: an unchanged card sends nothing to the page."""
    if widget.value != value:
        widget.value = value


def card_box(w):
    """An empty box that lays cards out side by side, wrapping to the next row."""
    return w.Box(layout=w.Layout(display="flex", flex_flow="row wrap",
                                 align_items="flex-start"))


def set_cards(box, cache: dict, cards: dict) -> None:
    """Show ``cards`` (``{key: html}``, in order) in ``box``: one HTML widget per key,
    kept in ``cache`` and updated in place, so a card is never rebuilt."""
    import ipywidgets as w

    for key, text in cards.items():
        if key not in cache:
            cache[key] = w.HTML()
        set_value(cache[key], text)
    order = tuple(cache[key] for key in cards)
    if box.children != order:
        box.children = order


class LiveView:
    """Base of the views: state sections to read, event topics that call for a refresh.

    Subclasses set ``sections`` (state API sections) and ``topics`` (event topics), and
    implement ``_build(w)`` (make the widgets once), ``_update(state)`` (set their values),
    ``_render(state)`` (the static HTML) and ``_text(state)`` (a plain-text summary).
    """

    sections: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    min_interval = updater.MIN_INTERVAL  # seconds between refreshes, at least
    poll_interval = 2.0                  # refresh this often even without events

    def __init__(self, live: bool = True):
        from raylite.util.state import current_session

        self._lock = threading.RLock()
        self._core = current_session()
        self._state: dict | None = None
        self._status = ""
        self._last_refresh = 0.0
        self._updater = None
        self.closed = False
        w = ipywidgets()
        self._status_w = w.HTML() if w is not None else None
        self.widget = self._build(w) if w is not None else None
        if self._given_data():
            self.refresh()
            return
        if self._core is None:
            self._set_status("raylite is not initialized: call raylite.init() first")
            return
        if live and self.widget is not None:  # subscribed before the first read
            self._updater = updater.attach(self)
            self._set_status("live" if self._updater else "")
        self.refresh()

    # ------------------------------------------------------------------ public
    @property
    def live(self) -> bool:
        """Whether the shared updater keeps this view up to date."""
        return self._updater is not None

    @property
    def state(self) -> dict | None:
        """The last state this view rendered (a dict of state API sections)."""
        return self._state

    def refresh(self) -> None:
        """Read the state now and update the view (live views do this by themselves); a
        view of given data just redraws it."""
        from raylite.util.state import current_session, get_state

        if self._given_data():
            self._apply(self._extend({"time": time.time()}))
            return
        core = self._core
        if core is None or current_session() is not core:
            return
        sections = self._sections_now()
        state = get_state(*sections, session=core, timeout=updater.READ_TIMEOUT) if sections \
            else {"time": time.time()}
        self._apply(self._extend(state))

    def html(self) -> str:
        """The view as static HTML (what GitHub, nbviewer and exports show)."""
        with self._lock:
            state = self._state
            body = self._render(state) if state is not None else ""
        return f'<div class="raylite-view">{body}{R.message(self._status)}</div>'

    def close(self) -> None:
        """Stop updating and close the widgets (the static rendering stays usable)."""
        if self._updater is not None:
            updater.detach(self)
            self._updater = None
        self.closed = True
        if self.widget is not None:
            _close_tree(self.widget)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _repr_html_(self) -> str:
        self._refresh_if_static()
        return self.html()

    def _repr_mimebundle_(self, include=None, exclude=None):
        self._refresh_if_static()
        data = {"text/plain": repr(self), "text/html": self.html()}
        if self.widget is not None and not self.closed:
            bundle = self.widget._repr_mimebundle_(include=include, exclude=exclude) or {}
            if WIDGET_MIME in bundle:
                data[WIDGET_MIME] = bundle[WIDGET_MIME]
        return data

    def __repr__(self) -> str:
        with self._lock:
            state = self._state
            text = self._text(state) if state is not None else ""
        status = f" [{self._status}]" if self._status else ""
        return f"{type(self).__name__}{status}" + (f"\n{text}" if text else "")

    # ------------------------------------------------------- for the updater
    def _sections_now(self) -> tuple[str, ...]:
        return self.sections

    def _extend(self, state: dict) -> dict:
        """Add what the head's state does not hold (e.g. Serve's status, read from its
        controller) to a state read, on the updater's thread or in ``refresh()``. Returns
        a new dict: ``state`` is shared by every view refreshed in the same tick."""
        return state

    def _on_event(self, topic: str, body: dict) -> bool:
        """Note an event (on the stream's thread; keep it cheap); True to refresh."""
        return True

    def _apply(self, state: dict) -> None:
        with self._lock:
            self._state = state
            self._last_refresh = time.monotonic()
            self._ingest(state)
            if self.widget is not None and not self.closed:
                self._update(state)

    def _ingest(self, state: dict) -> None:
        """Fold a state read into what the view remembers (histories); optional."""

    def _set_status(self, text: str) -> None:
        self._status = text
        if self._status_w is not None:
            set_value(self._status_w, R.message(text) if text else "")

    def _detached(self, reason: str) -> None:
        """The updater stopped (shutdown, or the view closed): keep the last state."""
        self._updater = None
        if not self.closed:
            when = R.stamp(time.time() - (time.monotonic() - self._last_refresh))
            self._set_status(f"{reason} (as of {when})")

    def _refresh_if_static(self) -> None:
        """A view that is not live shows fresh state each time it is displayed."""
        if self._updater is None and not self.closed:
            try:
                self.refresh()
            except Exception as e:
                self._set_status(f"cannot read the cluster state: {e}")

    def _await(self, ref):
        """The value of ``ref`` (a read-only call the view made, e.g. to a controller),
        waited for in steps so a ``shutdown()`` or :data:`updater.READ_TIMEOUT` ends the
        wait instead of the updater's thread hanging on a dead cluster."""
        import raylite
        from raylite.util.state import current_session

        deadline = time.monotonic() + updater.READ_TIMEOUT
        while not raylite.wait([ref], timeout=READ_STEP_S)[0]:
            if current_session() is not self._core:
                raise RuntimeError("raylite was shut down")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer in {updater.READ_TIMEOUT:g} s")
        return raylite.get(ref)

    # ------------------------------------------------------- for subclasses
    _given = None  # the data a view was given to draw (no cluster needed), if any

    def _given_data(self) -> bool:
        """True for a view drawn from data it was given (no cluster needed)."""
        return self._given is not None

    def _build(self, w):
        raise NotImplementedError

    def _update(self, state: dict) -> None:
        raise NotImplementedError

    def _render(self, state: dict) -> str:
        raise NotImplementedError

    def _text(self, state: dict) -> str:
        return ""


def _close_tree(widget) -> None:
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    widget.close()
