"""The autoscaler loop: read the cluster's state, ask the policy, act, report.

:class:`Autoscaler` runs as a background thread of the driver (Ray runs its monitor as a
process beside the head): every ``interval_s`` it asks the head for its nodes and pending
demand (``GET_STATE``), follows the launches in flight (a node that joined is running and
clears its type's failure; a launch that failed or did not join within
``launch_timeout_s`` records the failure time of its type, the input of the availability
score), calls :func:`raylite.autoscaler.policy.decide`, launches and terminates through
its :class:`~raylite.autoscaler.provider.NodeProvider` (a terminated node is first taken
out at the head with ``REMOVE_NODE``), and sends the head an ``AUTOSCALER_REPORT``: a
self-describing status (``raylite.util.state.get_autoscaler_status()``) and this tick's
decisions with their reasons, which the head also publishes on the ``"autoscaler"``
event topic for live views. It stops with ``raylite.shutdown()``.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time

from raylite.autoscaler import policy
from raylite.autoscaler.config import AutoscalerConfig, NodeTypeConfig
from raylite.autoscaler.provider import LocalNodeProvider, NodeProvider
from raylite.core import runtime_api

log = logging.getLogger(__name__)

HISTORY = 200  # decisions kept in the status


class Autoscaler:
    """Scales the cluster's autoscaled nodes between their min and max counts.

    ``config``: an :class:`AutoscalerConfig` or a dict of its fields (Ray's key names
    accepted). ``provider``: where nodes come from (default: a :class:`LocalNodeProvider`
    on the cluster ``init()`` started). :meth:`step` runs one tick by hand.
    """

    def __init__(self, config: AutoscalerConfig | dict, provider: NodeProvider | None = None):
        self.config = AutoscalerConfig.from_dict(config)
        self.provider = provider if provider is not None else LocalNodeProvider()
        self.instances: dict[str, dict] = {}  # node id -> launching / running record
        self.failures: dict[str, float] = {}  # node type -> time of its last failed launch
        self.counts = collections.Counter()  # (node type, "launches"/"failures"/...) -> n
        self.history: collections.deque = collections.deque(maxlen=HISTORY)
        self.resource_requests: list[dict] = []
        self.last_decision: policy.Decision | None = None
        self.decision_ms = 0.0
        self.ticks = 0
        self._infeasible_seen: set = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def node_types(self) -> dict[str, NodeTypeConfig]:
        return self.config.node_types

    # ------------------------------------------------------------------ the loop
    def start(self) -> Autoscaler:
        """Run the loop in a background thread; ``raylite.shutdown()`` stops it."""
        if self._stop.is_set():
            raise RuntimeError("this autoscaler was stopped; make a new one")
        runtime_api.add_shutdown_hook(self.stop)
        self._thread = threading.Thread(target=self._run, name="raylite-autoscaler",
                                        daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            if not runtime_api.is_initialized():
                break
            try:
                self.step()
            except Exception:
                if self._stop.is_set() or not runtime_api.is_initialized():
                    break
                log.exception("autoscaler tick failed; trying again next tick")
            self._stop.wait(self.config.interval_s)

    def stop(self) -> None:
        """Stop the loop and cancel launches not started yet; the nodes stay (until
        ``raylite.shutdown()`` stops the cluster). Stopping twice does nothing."""
        if self.stopped:
            return
        self._stop.set()
        runtime_api.remove_shutdown_hook(self.stop)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10.0)
        self.provider.shutdown()
        if runtime_api.is_initialized():
            status = self.status(None, now=time.time())
            status["running"] = False
            runtime_api.report_autoscaler(status, [])

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def step(self) -> policy.Decision:
        """One tick: observe, decide, act, report. Returns the policy's decision."""
        if not runtime_api.is_initialized():
            raise RuntimeError("raylite is not initialized")
        now = time.time()
        state = runtime_api.cluster_state("nodes", "demand", timeout=10)
        events: list[dict] = []
        alive = {n["node_id"]: n for n in state["nodes"] if n["alive"]}
        self._follow_launches(alive, now, events)
        nodes = [dict(n, status="running") for n in alive.values()]
        nodes += [self._launching_view(nid, inst) for nid, inst in self.instances.items()
                  if inst["status"] == "launching"]
        t0 = time.perf_counter()
        decision = policy.decide(
            state["demand"], nodes, self.node_types, failures=self.failures, now=now,
            idle_timeout_s=self.config.idle_timeout_s, max_workers=self.config.max_workers,
            launch_budget=self._launch_budget(), resource_requests=self.resource_requests)
        self.decision_ms = (time.perf_counter() - t0) * 1e3
        self.last_decision = decision
        self._act(decision, now, events)
        self._note_infeasible(decision, now, events)
        self.history.extend(events)
        self.ticks += 1
        runtime_api.report_autoscaler(self.status(state, now), events)
        return decision

    # ------------------------------------------------------------------ bookkeeping
    def _event(self, events: list, now: float, action: str, node_type: str | None,
               reason: str, node_ids=(), count: int | None = None) -> None:
        events.append({"time": now, "action": action, "node_type": node_type,
                       "count": len(node_ids) if count is None else count,
                       "node_ids": list(node_ids), "reason": reason})
        log.info("autoscaler: %s %s x%s: %s", action, node_type, events[-1]["count"], reason)

    def _follow_launches(self, alive: dict, now: float, events: list) -> None:
        for nid, inst in list(self.instances.items()):
            t = inst["node_type"]
            if inst["status"] == "launching":
                if nid in alive:
                    inst["status"], inst["running_at"] = "running", now
                    took = now - inst["requested_at"]
                    cleared = self.failures.pop(t, None) is not None
                    self._event(events, now, "node_running", t,
                                f"{nid} joined after {took:.1f}s" +
                                (f"; {t} is available again" if cleared else ""), [nid])
                    continue
                status, msg = self.provider.launch_status(nid)
                if status in ("failed", "terminated"):
                    self._launch_failed(nid, inst, now, msg or status, events)
                elif now - inst["requested_at"] > self.config.launch_timeout_s:
                    self._launch_failed(nid, inst, now, "not running after "
                                        f"{self.config.launch_timeout_s:g}s (launch timeout)"
                                        + (f": {msg}" if msg else ""), events)
            elif nid not in alive:
                del self.instances[nid]
                self.provider.terminate(nid)
                self.counts[t, "lost"] += 1
                self._event(events, now, "node_lost", t, f"{nid} left the cluster", [nid])
        for nid, n in alive.items():  # autoscaled nodes started before this autoscaler
            if n.get("node_type") in self.node_types and nid not in self.instances:
                self.instances[nid] = {"node_type": n["node_type"], "status": "running",
                                       "requested_at": n.get("start_time", now),
                                       "running_at": n.get("start_time", now)}

    def _launch_failed(self, nid: str, inst: dict, now: float, why: str, events) -> None:
        t = inst["node_type"]
        del self.instances[nid]
        self.provider.terminate(nid)
        self.failures[t] = now
        self.counts[t, "failures"] += 1
        self._event(events, now, "launch_failed", t, f"{nid}: {why}", [nid])

    def _launching_view(self, nid: str, inst: dict) -> dict:
        cfg = self.node_types[inst["node_type"]]
        return {"node_id": nid, "node_type": cfg.name, "status": "launching", "alive": True,
                "resources": dict(cfg.resources), "available": dict(cfg.resources),
                "labels": {**cfg.node_labels(), "raylite.io/node-id": nid}, "idle_s": 0.0}

    def _launch_budget(self) -> int:
        """Ray's rule: at most max(initial, speed x running) nodes launching at once."""
        running = sum(i["status"] == "running" for i in self.instances.values())
        launching = sum(i["status"] == "launching" for i in self.instances.values())
        cap = max(self.config.upscaling_initial_nodes,
                  math.ceil(self.config.upscaling_speed * running))
        return max(0, cap - launching)

    def _act(self, decision: policy.Decision, now: float, events: list) -> None:
        for la in decision.launches:
            cfg = self.node_types[la.node_type]
            try:
                ids = self.provider.launch(cfg, la.count)
            except Exception as e:
                self.failures[cfg.name] = now
                self.counts[cfg.name, "failures"] += 1
                self._event(events, now, "launch_failed", cfg.name,
                            f"the provider refused {la.count} node(s): {e}", count=la.count)
                continue
            for nid in ids:
                self.instances[nid] = {"node_type": cfg.name, "status": "launching",
                                       "requested_at": now}
            self.counts[cfg.name, "launches"] += len(ids)
            self._event(events, now, "launch", cfg.name, la.reason, ids)
        for term in decision.terminations:
            try:
                runtime_api.remove_node(term.node_id, timeout=10)
            finally:
                self.provider.terminate(term.node_id)
            self.instances.pop(term.node_id, None)
            self.counts[term.node_type, "terminations"] += 1
            self._event(events, now, "terminate", term.node_type, term.reason, [term.node_id])

    def _note_infeasible(self, decision: policy.Decision, now: float, events: list) -> None:
        """An event when demand that no node type can hold appears (once per shape)."""
        seen = set()
        for rec in decision.infeasible:
            key = (tuple(sorted(rec["demand"].items())), tuple(rec["label_selector"].items()))
            seen.add(key)
            if key not in self._infeasible_seen:
                self._event(events, now, "infeasible", None,
                            f"{rec['count']} waiting: {rec['reason']} "
                            f"(needs {rec['demand']}, labels {rec['label_selector']})",
                            count=rec["count"])
        self._infeasible_seen = seen

    # ------------------------------------------------------------------ reporting
    def status(self, state: dict | None, now: float) -> dict:
        """The report: config, node types with their counts and availability, nodes,
        pending demand and what the policy made of it, recent decisions."""
        d = self.last_decision
        scores = policy.availability_scores(self.failures)
        types = {}
        for name, cfg in self.node_types.items():
            mine = [i for i in self.instances.values() if i["node_type"] == name]
            types[name] = {**cfg.describe(),
                           "running": sum(i["status"] == "running" for i in mine),
                           "launching": sum(i["status"] == "launching" for i in mine),
                           "availability": scores.get(name, 1.0),
                           "last_failure": self.failures.get(name),
                           **{k: self.counts[name, k] for k in
                              ("launches", "failures", "terminations", "lost")}}
        demand = (state or {}).get("demand") or {}
        idle = {n["node_id"]: n.get("idle_s") for n in (state or {}).get("nodes", ())}
        return {
            "time": now, "running": not self._stop.is_set(), "ticks": self.ticks,
            "decision_ms": self.decision_ms, "config": self.config.describe(),
            "provider": getattr(self.provider, "describe", lambda: {})(),
            "node_types": types,
            "nodes": [{"node_id": nid, "node_type": i["node_type"], "status": i["status"],
                       "requested_at": i["requested_at"], "running_at": i.get("running_at"),
                       "idle_s": idle.get(nid)} for nid, i in self.instances.items()],
            "pending": {"requests": len(demand.get("requests", ())),
                        "placement_groups": len(demand.get("placement_groups", ())),
                        "shapes": d.pending if d else []},
            "infeasible": d.infeasible if d else [],
            "unavailable": {t: {"score": scores[t], "last_failure": ts,
                                "failures": self.counts[t, "failures"]}
                            for t, ts in self.failures.items()},
            "resource_requests": list(self.resource_requests),
            "launches": sum(v for (_, k), v in self.counts.items() if k == "launches"),
            "terminations": sum(v for (_, k), v in self.counts.items() if k == "terminations"),
            "failures": [e for e in self.history if e["action"] == "launch_failed"][-20:],
            "decisions": list(self.history)[-50:],
        }

    def __repr__(self) -> str:
        instances = list(self.instances.values())
        counts = {t: sum(i["node_type"] == t for i in instances) for t in self.node_types}
        return f"Autoscaler(running={self.running}, nodes={counts}, failed={self.failures})"


# ------------------------------------------------------------------ this process's one
_current: Autoscaler | None = None


def start(config: AutoscalerConfig | dict, provider: NodeProvider | None = None) -> Autoscaler:
    """Start the autoscaler loop in this driver (``raylite.init()`` first); it stops with
    ``raylite.shutdown()`` or :func:`stop`. Returns it (its ``provider`` has the knobs)."""
    global _current
    if not runtime_api.is_initialized():
        raise RuntimeError("call raylite.init() before starting the autoscaler")
    if get() is not None:
        raise RuntimeError("an autoscaler is already running; raylite.autoscaler.stop() it "
                           "first")
    scaler = Autoscaler(config, provider)
    if isinstance(scaler.provider, LocalNodeProvider):
        _ = scaler.provider.cluster  # fail now, not in the loop, without a local cluster
    _current = scaler.start()
    return scaler


def stop() -> None:
    """Stop the running autoscaler (the nodes it launched stay until shutdown)."""
    global _current
    scaler, _current = _current, None
    if scaler is not None:
        scaler.stop()


def get() -> Autoscaler | None:
    """The autoscaler started by :func:`start` in this process, while it runs."""
    return _current if _current is not None and not _current.stopped else None
