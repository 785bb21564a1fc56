"""Timeline: tasks per worker over time, as a Gantt chart."""

from __future__ import annotations

from raylite.widgets import render_timeline as RT
from raylite.widgets.base import LiveView, set_value


class Timeline(LiveView):
    """A Gantt chart of tasks: one lane per worker (grouped by node), one bar per task,
    coloured by task name; failed tasks outlined in red, running ones faded. Hover a bar
    for its name, state, duration, node and worker.

    ``Timeline()`` reads the cluster's task table (what ``raylite.timeline()`` returns);
    ``Timeline(df)`` draws a DataFrame from ``raylite.timeline()`` (or a list of task
    records) without a cluster, e.g. after shutdown. ``live=True`` redraws it as tasks
    change (at most once a second). Ray's ``ray.timeline()`` only writes a Chrome trace
    (raylite's does too, given a filename); this draws it in the notebook.
    """

    sections = ("tasks",)
    topics = ("task",)
    min_interval = 1.0  # the whole chart is redrawn: at most once a second
    poll_interval = 5.0

    def __init__(self, data=None, *, live: bool = False, max_bars: int = 2000):
        self.max_bars = max_bars
        self._records = None if data is None else _records(data)
        super().__init__(live=live and data is None)

    def _given_data(self) -> bool:
        return self._records is not None

    def refresh(self) -> None:
        """Read the task table again (a Timeline of given data just redraws)."""
        if self._records is not None:
            self._apply({"tasks": self._records})
        else:
            super().refresh()

    def _build(self, w):
        self._chart = w.HTML()
        return w.VBox([self._chart, self._status_w])

    def _update(self, state: dict) -> None:
        set_value(self._chart, self._render(state))

    def _render(self, state: dict) -> str:
        now = state.get("time")
        return RT.gantt_svg(state.get("tasks") or [], now, self.max_bars)

    def _text(self, state: dict) -> str:
        items = RT.bars(state.get("tasks") or [], state.get("time"))
        lanes = {b["lane"] for b in items}
        names = ", ".join(sorted({b["name"] for b in items})[:8])
        return f"  {len(items)} tasks on {len(lanes)} workers" + \
            (f": {names}" if names else "")


def _records(data) -> list[dict]:
    if hasattr(data, "to_dict"):  # a pandas DataFrame
        return data.to_dict("records")
    return [dict(r) for r in data]
