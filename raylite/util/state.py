"""The state API (Ray: ``ray.util.state``) and the cluster event stream.

``list_nodes()``, ``list_workers()``, ``list_actors()``, ``list_tasks()``,
``list_objects()``, ``list_placement_groups()`` return a :class:`StateList`: a list of
plain dict records (Ray's field names where they exist) that shows itself as a table in a
notebook and turns into a pandas DataFrame with ``.to_df()`` (or ``as_df=True``).
``filters=[("state", "=", "ALIVE")]`` (``=`` / ``!=``) and ``limit`` work as in Ray.
``get_autoscaler_status()`` is the autoscaler's last report. ``timeline()`` returns task
events as a DataFrame and can write a Chrome trace (``chrome://tracing``, Perfetto).

:func:`subscribe` opens a live stream of cluster events (nodes added or removed, task
state changes, actor states, placement groups, autoscaler decisions with reasons,
requests no node can satisfy); the widgets read it.

Differences from Ray: records are dicts, not dataclasses; the head keeps the last 20,000
tasks; ``list_objects`` lists the objects this driver knows plus every object in the
stores of the nodes on this host (a multi-host cluster's other hosts are not scanned).
"""

from __future__ import annotations

import html
import json
import queue
import threading
import time

from raylite.core import runtime_api
from raylite.core.lifecycle import require_core

__all__ = ["StateList", "get_state", "current_session", "list_nodes", "list_workers",
           "list_actors", "list_tasks", "list_objects", "list_placement_groups",
           "get_autoscaler_status", "timeline", "subscribe", "EventStream", "summarize_tasks"]


def current_session():
    """An opaque token for this process's connection to a cluster: None before
    ``init()`` and after ``shutdown()``, a new one after each ``init()``. Background
    readers (the widgets) keep it and pass it as ``session=`` (a raylite extension)."""
    return runtime_api.current()


def get_state(*sections: str, limit: int | None = None, session=None,
              timeout: float | None = 30.0) -> dict:
    """The head's state sections (nodes, workers, actors, placement_groups, tasks,
    demand, autoscaler; all when none is named) in one round trip: what the ``list_*``
    functions read. Given ``session`` (from :func:`current_session`) it never starts a
    cluster and gives up as soon as that session ends."""
    if session is None:
        require_core()
    return runtime_api.cluster_state(*sections, limit=limit, session=session, timeout=timeout)


class StateList(list):
    """A list of state records that renders as a table and converts to pandas."""

    def __init__(self, records, kind: str = "records"):
        super().__init__(records)
        self.kind = kind

    def to_df(self):
        """These records as a pandas DataFrame (one row per record)."""
        import pandas as pd

        return pd.DataFrame([_flat(r) for r in self])

    def _repr_html_(self) -> str:
        try:
            return f"<b>{len(self)} {html.escape(self.kind)}</b>" + \
                self.to_df().to_html(max_rows=50, index=False)
        except ImportError:
            return f"<pre>{html.escape(repr(list(self)))}</pre>"


def _flat(r: dict) -> dict:
    """Nested dicts (resources, labels) shown as short text in a table."""
    return {k: (", ".join(f"{a}={b:g}" if isinstance(b, float) else f"{a}={b}"
                          for a, b in v.items()) if isinstance(v, dict) else v)
            for k, v in r.items()}


def _apply(records: list[dict], filters, limit: int | None, kind: str,
           as_df: bool = False):
    for f in filters or ():
        if len(f) != 3 or f[1] not in ("=", "!=", "=="):
            raise ValueError(f"A filter is (key, '=' or '!=', value), got {f!r}")
        key, op, value = f
        if records and key not in records[0]:
            raise ValueError(f"Cannot filter {kind} on {key!r}; fields are: "
                             f"{', '.join(records[0])}")
        want = op != "!="
        records = [r for r in records if (str(r.get(key)) == str(value)) == want]
    if limit is not None:
        records = records[:limit]
    out = StateList(records, kind)
    return out.to_df() if as_df else out


def list_nodes(filters=None, limit: int | None = None, as_df: bool = False, detail=False):
    """Nodes: id, state (ALIVE/DEAD), resources and what is available, labels, object
    store use, idle time."""
    recs = []
    for n in get_state("nodes")["nodes"]:
        r = dict(n)
        r["state"] = "ALIVE" if n["alive"] else "DEAD"
        r["resources_total"] = r.pop("resources")
        r["resources_available"] = r.pop("available")
        recs.append(r)
    return _apply(recs, filters, limit, "nodes", as_df)


def list_workers(filters=None, limit: int | None = None, as_df: bool = False, detail=False):
    """Worker processes: id, node, pid, state (idle / leased / actor), what they hold."""
    return _apply(get_state("workers")["workers"], filters, limit, "workers", as_df)


def list_actors(filters=None, limit: int | None = None, as_df: bool = False, detail=False):
    """Actors: id, class, name, state (PENDING / ALIVE / RESTARTING / DEAD), node, pid."""
    recs = []
    for a in get_state("actors")["actors"]:
        r = {k: v for k, v in a.items() if k not in ("meta", "addr", "core_addr")}
        r["actor_id"] = a["actor_id"].hex() if isinstance(a["actor_id"], bytes) \
            else a["actor_id"]
        if r.get("error") is not None:
            r["error"] = str(r["error"])
        recs.append(r)
    return _apply(recs, filters, limit, "actors", as_df)


def list_tasks(filters=None, limit: int | None = None, as_df: bool = False, detail=False):
    """Tasks and actor calls (the most recent 20,000): name, state
    (PENDING_NODE_ASSIGNMENT / RUNNING / FINISHED / FAILED), node, worker, times."""
    runtime_api.flush_task_events(require_core())  # a list after a get sees its tasks end
    return _apply(get_state("tasks")["tasks"], filters, limit, "tasks", as_df)


def list_placement_groups(filters=None, limit: int | None = None, as_df: bool = False,
                          detail=False):
    """Placement groups: id, name, strategy, state, and each bundle's node."""
    return _apply(get_state("placement_groups")["placement_groups"], filters, limit,
                  "placement groups", as_df)


def list_objects(filters=None, limit: int | None = None, as_df: bool = False, detail=False):
    """Objects: those this process owns or borrows (with local reference counts) and
    every object in the stores of this host's nodes."""
    core = require_core()
    recs = runtime_api.owned_objects(core)
    seen = {r["object_id"] for r in recs}
    recs += [dict(r, owner="another process", ref_count=None, escaped=None)
             for r in runtime_api.stored_objects(core) if r["object_id"] not in seen]
    return _apply(recs, filters, limit, "objects", as_df)


def get_autoscaler_status() -> dict | None:
    """The autoscaler's last report (node types, counts, pending demand, decisions,
    unavailable types), or None when no autoscaler runs."""
    return get_state("autoscaler")["autoscaler"]


def summarize_tasks() -> dict:
    """Counts of tasks per (name, state), as Ray's ``summarize_tasks``."""
    out: dict = {}
    for t in list_tasks():
        out.setdefault(t["name"], {}).setdefault(t["state"], 0)
        out[t["name"]][t["state"]] += 1
    return out


def timeline(filename: str | None = None):
    """Task events as a DataFrame (one row per task that started: name, node, worker,
    start, end, duration in seconds). With ``filename``, also writes a Chrome trace (JSON
    array of complete events, one process per node and one thread per worker) that
    ``chrome://tracing`` or Perfetto open, like ``ray.timeline``."""
    import pandas as pd

    rows = [t for t in list_tasks() if t["start"] is not None]
    df = pd.DataFrame(rows, columns=["task_id", "name", "type", "state", "node_id",
                                     "worker_id", "actor_id", "submitted", "start", "end",
                                     "error"])
    if len(df):
        df["duration"] = df["end"] - df["start"]
        df = df.sort_values("start").reset_index(drop=True)
    else:
        df["duration"] = []
    if filename is not None:
        events = []
        for r in rows:
            end = r["end"] if r["end"] is not None else time.time()
            events.append({"name": r["name"], "cat": r["type"], "ph": "X",
                           "ts": r["start"] * 1e6, "dur": max(0.0, end - r["start"]) * 1e6,
                           "pid": f"node {r['node_id']}", "tid": f"worker {r['worker_id']}",
                           "args": {"task_id": r["task_id"], "state": r["state"],
                                    "error": r["error"]}})
        with open(filename, "w") as f:
            json.dump(events, f)
    return df


# ---------------------------------------------------------------- the event stream
TOPICS = runtime_api.EVENT_TOPICS


class EventStream:
    """Live cluster events as ``(topic, body)`` pairs, read from the head's event socket
    by a background thread: iterate, call :meth:`get`, or give ``callback``.

    Topics: ``node`` (``node_id``, ``alive``, ``info``), ``task`` (``events``: task
    records that changed), ``actor`` (actor info), ``placement_group`` (group info),
    ``autoscaler`` (status and decisions with reasons), ``pending`` (a request no node can
    satisfy), ``log`` (worker output). Task events flow only while someone subscribes.
    """

    def __init__(self, topics=None, callback=None, maxsize: int = 10000, session=None):
        topics = list(topics or [t for t in TOPICS if t != "log"])
        bad = [t for t in topics if t not in TOPICS]
        if bad:
            raise ValueError(f"Unknown event topics {bad}; choose from {sorted(TOPICS)}")
        core = session or require_core()
        self.topics = topics
        self.callback = callback
        self.queue: queue.Queue = queue.Queue(maxsize)
        self.dropped = 0
        self._stop = threading.Event()
        self._sub = runtime_api.subscribe_events(topics, core)  # closed by the thread
        self._thread = threading.Thread(target=self._run, name="raylite-events", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10.0  # ZeroMQ's slow joiner: wait until we hear
        while not self._sub.synced.wait(0.02) and time.monotonic() < deadline:
            self._sub.ping()

    def _run(self) -> None:
        sub = self._sub
        while not self._stop.is_set():
            if sub.ended():  # raylite.shutdown(): the stream ends
                self._stop.set()
                break
            try:
                event = sub.recv(100)
            except ConnectionError:
                break
            if event is None:
                continue
            if self.callback is not None:
                try:
                    self.callback(*event)
                except Exception:  # a widget's bug must not stop the stream
                    import logging

                    logging.getLogger("raylite").exception("event callback failed")
            else:
                try:
                    self.queue.put_nowait(event)
                except queue.Full:
                    self.dropped += 1
        sub.close()

    def get(self, timeout: float | None = None):
        """The next ``(topic, body)``; raises ``queue.Empty`` after ``timeout``."""
        return self.queue.get(timeout=timeout)

    def __iter__(self):
        while not self._stop.is_set():
            try:
                yield self.queue.get(timeout=0.1)
            except queue.Empty:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self) -> str:
        return f"EventStream(topics={self.topics}, queued={self.queue.qsize()})"


def subscribe(topics=None, callback=None) -> EventStream:
    """Open a live stream of cluster events (see :class:`EventStream`); a raylite
    extension (Ray has no public event stream)."""
    return EventStream(topics, callback)


def _pg_html(info: dict) -> str:
    rows = "".join(
        f"<tr><td>{b['bundle_index']}</td><td>{html.escape(_flat({'r': b['resources']})['r'])}"
        f"</td><td>{html.escape(str(b['node_id']))}</td></tr>" for b in info["bundles"])
    return (f"<div><b>PlacementGroup</b> {html.escape(info['name'] or info['placement_group_id'])}"
            f" &middot; {info['strategy']} &middot; <b>{info['state']}</b>"
            f"<table><tr><th>bundle</th><th>resources</th><th>node</th></tr>{rows}</table></div>")
