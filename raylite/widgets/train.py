"""TrainView: a Train run live — per-rank curves, placement, checkpoints, restarts."""

from __future__ import annotations

from raylite.widgets import render_train as RT
from raylite.widgets.base import LiveView, set_value

NAMESPACE = "raylite_train"  # where trainers register their run's coordinator actor


class TrainView(LiveView):
    """A Train run, live: each rank's ``metric`` (default ``loss``) by report as curves
    (restarts marked), where each rank runs (node, labels, pid) with its last report,
    and the checkpoints with their scores (kept, validating, deleted by retention).

    ``TrainView()`` follows the newest run (make it before ``fit()``: it picks the run up
    when it starts); ``TrainView(run="name")`` one run by its ``RunConfig.name``. It
    reads the run's coordinator actor (read-only ``snapshot()``) twice a second on the
    widgets' shared updater. ``TrainView(snapshot)`` draws a given snapshot. Ray shows
    Train runs in its dashboard; this is a widget in the notebook.
    """

    sections = ()
    topics = ("actor",)
    poll_interval = 0.5

    def __init__(self, data: dict | None = None, *, run: str | None = None,
                 metric: str | None = None, live: bool = True):
        self.run_name = run
        self.metric = metric
        self.snapshot: dict | None = data
        self.error: str | None = None
        self._given = data
        self._handle = None
        self._handle_name = None
        super().__init__(live=live and data is None)

    # ------------------------------------------------------------ reading the run
    def _find(self):
        """The newest run's coordinator (or the named run's), or None."""
        import raylite
        from raylite.util.state import list_actors

        runs = [a for a in list_actors() if a.get("namespace") == NAMESPACE
                and a.get("state") == "ALIVE" and a.get("name")]
        if self.run_name is not None:
            runs = [a for a in runs if a["name"].rsplit(":", 1)[0] == self.run_name]
        if not runs:
            return None
        newest = max(runs, key=lambda a: a["name"].rsplit(":", 1)[-1])  # start time
        if newest["name"] != self._handle_name:
            self._handle = raylite.get_actor(newest["name"], namespace=NAMESPACE)
            self._handle_name = newest["name"]
        return self._handle

    def _read(self) -> dict | None:
        if self._given is not None:
            return self._given
        handle = self._find() if self.run_name is not None or self._handle is None or \
            self._newer_run() else self._handle
        if handle is None:
            return self.snapshot  # the run ended and its coordinator is gone: keep the last
        return self._await(handle.snapshot.remote())

    def _newer_run(self) -> bool:
        s = self.snapshot
        return s is None or s.get("state") in ("FINISHED", "ERRORED")

    def _extend(self, state: dict) -> dict:
        try:
            return dict(state, train=self._read())
        except Exception as e:
            self._handle = None
            return dict(state, train=self.snapshot, train_error=f"{type(e).__name__}: {e}")

    def _ingest(self, state: dict) -> None:
        self.error = state.get("train_error")
        if state.get("train") is not None:
            self.snapshot = state["train"]

    # ------------------------------------------------------------ drawing
    def _build(self, w):
        self._body = w.HTML()
        return w.VBox([self._body, self._status_w])

    def _update(self, state: dict) -> None:
        set_value(self._body, self._render(state))

    def _render(self, state: dict) -> str:
        return RT.train_html(self.snapshot, self.metric, self.error)

    def _text(self, state: dict) -> str:
        return RT.train_text(self.snapshot)
