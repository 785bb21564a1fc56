"""ServeView: Serve's applications live — replicas against their targets, requests, and
each application's topology."""

from __future__ import annotations

import collections
import time

from raylite.widgets import render_serve as RS
from raylite.widgets.base import LiveView, card_box, set_cards, set_value


class ServeView(LiveView):
    """Serve, live: for each application its topology as a graph (deployments as boxes
    with running/target replicas and their load, handle calls as arrows, the ingress
    drawn thick behind its HTTP route), and for each deployment a chart over time of its
    running replicas against the target (starting replicas shaded) above its ongoing and
    queued requests.

    ``ServeView()`` after ``raylite.init()`` (Serve may start later: the view waits for
    it); display it. It reads ``serve.status()``'s data from the Serve controller on the
    widgets' shared updater thread, twice a second (four times at most, when replicas
    start or stop), and never starts or changes Serve. ``ServeView(status)`` draws a
    status without a cluster: what ``serve.status()`` returned, or the JSON of the REST
    API's ``GET /api/serve/applications/``. The charts are recorded by the view from the
    time it is made (``window_s`` seconds are shown); :meth:`history` returns them.

    Ray shows Serve in its dashboard (a separate web app); this is a widget in the
    notebook, on the same data as ``serve.status()`` and the REST API.
    """

    sections = ()           # nothing from the head: Serve's controller is read instead
    topics = ("actor",)     # replicas are actors: their starts and ends refresh the view
    poll_interval = 0.5

    def __init__(self, data=None, *, live: bool = True, window_s: float = 120.0,
                 max_samples: int = 4000):
        self.window_s = window_s
        self.samples: collections.deque = collections.deque(maxlen=max_samples)
        self.colors: dict = {}
        self.serve_status: dict | None = None  # the last status read
        self.error: str | None = None         # why the last read failed, if it did
        self._given = RS.normalize(data) if data is not None else None
        self._controller = None
        self._cards: dict = {}
        super().__init__(live=live and data is None)

    def history(self) -> list[dict]:
        """What the view recorded: one record per deployment and read, with ``t`` (wall
        time), ``app``, ``deployment``, ``status``, ``target``, ``running``,
        ``starting``, ``stopping``, ``ongoing``, ``queued`` (``pd.DataFrame(...)``)."""
        with self._lock:
            return [dict(d, t=s["t"], app=a, deployment=n) for s in self.samples
                    for (a, n), d in s["deps"].items()]

    # ------------------------------------------------------------ reading Serve
    def _extend(self, state: dict) -> dict:
        try:
            return dict(state, serve=self._read())
        except Exception as e:
            return dict(state, serve_error=f"{type(e).__name__}: {e}")

    def _lookup(self):
        """The Serve controller's handle, or None while Serve is not running."""
        import raylite
        from raylite.serve.context import CONTROLLER_NAME, SERVE_NAMESPACE

        try:
            self._controller = raylite.get_actor(CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        except ValueError:
            self._controller = None
        return self._controller

    def _read(self) -> dict | None:
        """``serve.status()``'s data, asked of the controller without ever starting Serve
        and without waiting past :data:`updater.READ_TIMEOUT` or a ``shutdown()``."""
        from raylite.util.state import current_session

        if self._given is not None:
            return self._given
        ctrl = self._controller or self._lookup()
        if ctrl is None:
            return None
        try:
            return RS.normalize(self._await(ctrl.get_status.remote()))
        except Exception:
            self._controller = None
            if current_session() is self._core and self._lookup() is None:
                return None  # Serve was shut down between two reads
            raise

    def _ingest(self, state: dict) -> None:
        self.error = state.get("serve_error")
        if self.error is not None:
            return
        self.serve_status = state.get("serve")
        point = RS.sample(self.serve_status, state.get("time") or time.time())
        self.colors = RS.assign_colors(self.colors, point["deps"])
        if self.samples and point["t"] - self.samples[-1]["t"] < 0.1:
            self.samples[-1] = point
        else:
            self.samples.append(point)

    # ------------------------------------------------------------ drawing
    def _build(self, w):
        self._header, self._topology = w.HTML(), w.HTML()
        self._box = card_box(w)
        return w.VBox([self._header, self._topology, self._box, self._status_w])

    def _now(self, state: dict) -> float | None:
        return state.get("time") or (self.samples[-1]["t"] if self.samples else None)

    def _update(self, state: dict) -> None:
        status = self.serve_status
        set_value(self._header, RS.serve_header(status, self.error))
        set_value(self._topology, RS.topology_html(status, self.colors))
        set_cards(self._box, self._cards, RS.deployment_cards(
            status, list(self.samples), self.colors, self._now(state), self.window_s))

    def _render(self, state: dict) -> str:
        return RS.serve_html(self.serve_status, list(self.samples), self.colors,
                             self._now(state), self.window_s, self.error)

    def _text(self, state: dict) -> str:
        return RS.serve_text(self.serve_status)
