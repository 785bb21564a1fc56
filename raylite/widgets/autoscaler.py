"""AutoscalerView: a live timeline of the autoscaler's demand, nodes and decisions."""

from __future__ import annotations

import collections

from raylite.widgets import render_autoscaler as RA
from raylite.widgets.base import LiveView, set_value


class AutoscalerView(LiveView):
    """The autoscaler, live: a timeline (SVG) of pending demand and of nodes per type
    (running, and running + launching), with the autoscaler's decisions as markers on one
    lane per node type (launches, nodes running, failed launches, terminations; hover for
    the reason) and red bands while a type is unavailable; a table of node types (their
    resources, labels, min/max, counts, availability score, last failure); and the latest
    decisions with their reasons.

    The timeline is recorded by the view from the time it is made (``window_s`` seconds
    are shown); decisions made before come from the autoscaler's report. Ray's dashboard
    shows the autoscaler's status as text (``ray status``); this draws it over time.
    """

    sections = ("nodes", "demand", "autoscaler")
    topics = ("autoscaler", "node", "pending", "placement_group")
    poll_interval = 1.0  # the time axis moves even when nothing happens

    def __init__(self, live: bool = True, window_s: float = 300.0, max_samples: int = 4000):
        self.window_s = window_s
        self.samples: collections.deque = collections.deque(maxlen=max_samples)
        self.decisions: list[dict] = []
        super().__init__(live)

    def _on_event(self, topic: str, body: dict) -> bool:
        if topic == "autoscaler":
            with self._lock:
                self.decisions = RA.merge_decisions(self.decisions, body.get("decisions"))
        return True

    def _ingest(self, state: dict) -> None:
        point = RA.sample(state)
        if self.samples and point["t"] - self.samples[-1]["t"] < 0.1:
            self.samples[-1] = point
        else:
            self.samples.append(point)
        status = state.get("autoscaler")
        if isinstance(status, dict):
            self.decisions = RA.merge_decisions(self.decisions, status.get("decisions"))

    def _types(self, status) -> list[str]:
        return list((status or {}).get("node_types") or {}) or \
            sorted({t for s in self.samples for t in s["types"]})

    def _build(self, w):
        self._header, self._svg, self._table, self._log = w.HTML(), w.HTML(), w.HTML(), \
            w.HTML()
        return w.VBox([self._header, self._svg, self._table, self._log, self._status_w])

    def _update(self, state: dict) -> None:
        status = state.get("autoscaler")
        samples = list(self.samples)
        set_value(self._header, RA.autoscaler_header(status, samples[-1] if samples else None,
                                                     state.get("autoscaler_note")))
        set_value(self._svg, RA.timeline_svg(samples, self.decisions, self._types(status),
                                             window_s=self.window_s))
        set_value(self._table, RA.node_types_table(status, samples[-1]["t"]))
        set_value(self._log, RA.decisions_list(self.decisions))

    def _render(self, state: dict) -> str:
        now = self.samples[-1]["t"] if self.samples else None
        return RA.autoscaler_html(state.get("autoscaler"), list(self.samples), self.decisions,
                                  now, self.window_s, state.get("autoscaler_note"))

    def _text(self, state: dict) -> str:
        status = state.get("autoscaler")
        if not status:
            return "  " + (state.get("autoscaler_note") or "no autoscaler report yet")
        last = self.samples[-1] if self.samples else {"pending": 0, "types": {}}
        lines = [f"  pending {last['pending']}; " + ", ".join(
            f"{t}: {r} running, {la} launching" for t, (r, la) in last["types"].items())]
        un = RA.unavailable_types(status)
        if un:
            lines.append("  unavailable: " + ", ".join(un))
        lines += [f"  {d.get('action')} {d.get('node_type') or ''}: {d.get('reason', '')}"
                  for d in self.decisions[-5:]]
        return "\n".join(lines)
