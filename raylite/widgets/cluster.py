"""ClusterView: the nodes of the cluster as live cards."""

from __future__ import annotations

from raylite.widgets import render as R
from raylite.widgets.base import LiveView, card_box, set_cards, set_value

MAX_TRACKED = 20000  # running-task records kept from events (a bound, not a window)


class ClusterView(LiveView):
    """The cluster's nodes as cards, updated live: a bar per resource (used / total),
    the object store (used / capacity), labels, workers by state, running tasks (by name)
    and actors, alive or dead; one line over the cards sums up the cluster.

    ``ClusterView()`` after ``raylite.init()``; display it (last expression of a cell).
    ``live=False`` reads the state each time it is displayed instead. ``close()`` stops
    it; ``raylite.shutdown()`` stops it too, leaving the last state on show.

    Unlike Ray's dashboard (a separate web app polling the GCS), this is a widget in the
    notebook's output, driven by the head's event stream and one shared updater thread;
    it reads state only and never changes the cluster.
    """

    sections = ("nodes", "workers", "actors", "demand")
    topics = ("node", "task", "actor", "pending", "placement_group")

    def __init__(self, live: bool = True):
        self._running: dict[str, dict] = {}  # task_id -> last RUNNING record
        self._seeded = False
        self._cards: dict = {}
        super().__init__(live)

    def running(self) -> dict:
        """``{node_id: Counter(task name)}`` of the tasks running now."""
        with self._lock:
            workers = (self._state or {}).get("workers")
            return R.running_by_node(list(self._running.values()), workers)

    def _sections_now(self) -> tuple[str, ...]:
        # the first read also takes the task table, to know what runs already
        return self.sections if self._seeded else self.sections + ("tasks",)

    def _on_event(self, topic: str, body: dict) -> bool:
        if topic == "task":
            with self._lock:
                self._track(body.get("events") or ())
        return True

    def _track(self, records) -> None:
        running = self._running
        for t in records:
            tid = t.get("task_id")
            if t.get("state") == "RUNNING":
                running[tid] = t
                if len(running) > MAX_TRACKED:
                    running.pop(next(iter(running)))
            else:
                running.pop(tid, None)

    def _ingest(self, state: dict) -> None:
        if "tasks" in state:
            self._track(state["tasks"])
            self._seeded = True

    def _build(self, w):
        self._header = w.HTML()
        self._box = card_box(w)
        return w.VBox([self._header, self._box, self._status_w])

    def _update(self, state: dict) -> None:
        running = R.running_by_node(list(self._running.values()), state.get("workers"))
        set_value(self._header, R.cluster_header(state, running))
        set_cards(self._box, self._cards, R.cluster_cards(state, running))

    def _render(self, state: dict) -> str:
        return R.cluster_html(state, R.running_by_node(list(self._running.values()),
                                                       state.get("workers")))

    def _text(self, state: dict) -> str:
        running = R.running_by_node(list(self._running.values()), state.get("workers"))
        lines = []
        for n in state.get("nodes") or []:
            nid = n.get("node_id")
            res = ", ".join(
                f"{k} {R.fmt_amount(k, v - (n.get('available') or {}).get(k, 0.0))}"
                f"/{R.fmt_amount(k, v)}" for k, v in (n.get("resources") or {}).items())
            tasks = sum(running.get(nid, {}).values())
            lines.append(f"  {nid} {'alive' if n.get('alive', True) else 'DEAD'}: {res}; "
                         f"store {R.fmt_bytes(n.get('store_used') or 0)}; "
                         f"{tasks} running")
        return "\n".join(lines)
