"""Autoscaling: a sliding window over one metric time series, and the scaling decision.

Both are pure (no I/O, time passed in), so they are tested directly and timed in
``benchmarks/serve.py``.

``MetricWindow`` keeps the points of the last ``window_s`` seconds with a running sum
(mean) and two monotonic deques (max, min): adding a point and evicting old ones is
amortised O(1), and reading the aggregate is O(1) — the window is never re-scanned or
sorted, however many points it holds (Ray 2.53 made this aggregation O(1) for a single
time series, from O(n log n)).
"""

from __future__ import annotations

import collections
import math

from raylite.serve.config import AutoscalingConfig


class MetricWindow:
    """Points ``(t, value)`` of the last ``window_s`` seconds; mean / max / min in O(1)."""

    __slots__ = ("window_s", "_points", "_sum", "_max", "_min")

    def __init__(self, window_s: float):
        self.window_s = window_s
        self._points: collections.deque = collections.deque()
        self._sum = 0.0
        self._max: collections.deque = collections.deque()  # values decreasing
        self._min: collections.deque = collections.deque()  # values increasing

    def __len__(self) -> int:
        return len(self._points)

    def add(self, t: float, value: float) -> None:
        """Append a point (times must not decrease) and drop those older than the window."""
        point = (t, value)
        self._points.append(point)
        self._sum += value
        mx, mn = self._max, self._min
        while mx and mx[-1][1] <= value:
            mx.pop()
        mx.append(point)
        while mn and mn[-1][1] >= value:
            mn.pop()
        mn.append(point)
        self.evict(t)

    def evict(self, now: float) -> None:
        cutoff = now - self.window_s
        points = self._points
        while points and points[0][0] < cutoff:
            old = points.popleft()
            self._sum -= old[1]
            if self._max[0] is old:
                self._max.popleft()
            if self._min[0] is old:
                self._min.popleft()
        if not points:
            self._sum = 0.0  # no drift carried across an empty window

    def aggregate(self, how: str = "mean") -> float | None:
        """The window's mean, max or min (None when empty). O(1)."""
        if not self._points:
            return None
        if how == "mean":
            return self._sum / len(self._points)
        if how == "max":
            return self._max[0][1]
        if how == "min":
            return self._min[0][1]
        raise ValueError(f"unknown aggregation {how!r}")


def desired_replicas(config: AutoscalingConfig, total: float, running: int) -> int:
    """The decision rule: ``ceil(running * (1 + (ratio - 1) * factor))`` with
    ``ratio = total / (target * running)``, clamped to ``[min_replicas, max_replicas]``."""
    if running <= 0:
        want = 1 if total > 0 else 0
        return max(config.min_replicas, min(config.max_replicas, want))
    ratio = total / (config.target_ongoing_requests * running)
    factor = config.up_factor if ratio > 1 else config.down_factor
    want = math.ceil(running * (1 + (ratio - 1) * factor) - 1e-9)
    return max(config.min_replicas, min(config.max_replicas, want))


class AutoscalingPolicy:
    """Turns metric samples into a target replica count for one deployment.

    ``record(now, total)`` adds a sample of the metric (ongoing + queued requests);
    ``decide(now, running, current)`` returns the new target: the rule's answer once it
    has pointed the same way (up or down from ``current``) for the up/down delay, else
    ``current``. With no replica running or starting and requests waiting, it scales up
    at once.
    """

    def __init__(self, config: AutoscalingConfig):
        self.config = config
        self.window = MetricWindow(config.look_back_period_s)
        self._direction = 0
        self._since = 0.0
        self.last_total = 0.0

    def record(self, now: float, total: float) -> None:
        self.last_total = total
        self.window.add(now, total)

    def decide(self, now: float, running: int, current: int) -> int:
        cfg = self.config
        if current == 0 and self.last_total > 0:
            self._direction = 0
            return max(1, cfg.min_replicas)
        if running == 0:
            return max(cfg.min_replicas, min(cfg.max_replicas, current))
        self.window.evict(now)
        total = self.window.aggregate(cfg.aggregation_function)
        if total is None:
            return current
        want = desired_replicas(cfg, total, running)
        direction = (want > current) - (want < current)
        if direction == 0:
            self._direction = 0
            return current
        if direction != self._direction:
            self._direction, self._since = direction, now
        delay = cfg.upscale_delay_s if direction > 0 else cfg.downscale_delay_s
        if now - self._since >= delay:
            self._direction = 0
            return want
        return current
