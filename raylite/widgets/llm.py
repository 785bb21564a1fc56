"""LLMView: LLM engines live — throughput, sequences, the KV cache and the prefix cache."""

from __future__ import annotations

import collections
import time

from raylite.widgets import render_llm as RL
from raylite.widgets import updater
from raylite.widgets.base import LiveView, card_box, set_cards, set_value

LLM_SERVER_PREFIX = "LLMServer_"


class LLMView(LiveView):
    """Engines, live: per model tokens/s, running and waiting sequences, KV blocks in use
    (preemptions marked), prefix-cache hit rate and time to first token, now and as
    charts over time.

    ``LLMView(engine)`` watches a local ``LLMEngine`` / ``AsyncLLMEngine`` (or a dict
    ``{name: engine}``); ``LLMView(app="llm")`` watches every ``LLMServer`` deployment of
    a Serve LLM application (one replica each, through its read-only ``stats`` method).
    It reads twice a second on the widgets' shared updater and never changes anything.
    ``LLMView({name: stats_dict})`` draws given stats. :meth:`history` returns the
    samples. Ray shows vLLM's metrics in Grafana; this is a notebook widget.
    """

    sections = ()
    topics = ()
    poll_interval = 0.5

    def __init__(self, source=None, *, app: str | None = None, live: bool = True,
                 window_s: float = 60.0, max_samples: int = 4000):
        self.window_s = window_s
        self.samples: collections.deque = collections.deque(maxlen=max_samples)
        self.models: dict = {}
        self.error: str | None = None
        self._app = app
        self._engines, self._given = {}, None
        if isinstance(source, dict) and all(isinstance(v, dict) for v in source.values()):
            self._given = source
        elif source is not None:
            self._engines = source if isinstance(source, dict) else {"engine": source}
        self._handles: dict = {}
        self._cards: dict = {}
        super().__init__(live=live and self._given is None)

    def history(self) -> list[dict]:
        """One record per model and read: ``t`` plus the numbers (``pd.DataFrame``)."""
        with self._lock:
            return [dict(n, t=s["t"], model=m) for s in self.samples
                    for m, n in s["models"].items()]

    def _given_data(self) -> bool:
        return self._given is not None or bool(self._engines and self._core is None)

    # ------------------------------------------------------------ reading
    def _extend(self, state: dict) -> dict:
        try:
            return dict(state, llm=self._read())
        except Exception as e:
            return dict(state, llm_error=f"{type(e).__name__}: {e}")

    def _read(self) -> dict:
        if self._given is not None:
            return self._given
        if self._engines:
            return {name: eng.stats() for name, eng in self._engines.items()}
        return self._read_serve() if self._app else {}

    def _read_serve(self) -> dict:
        from raylite import serve

        if not self._handles:
            app = (serve.status().applications or {}).get(self._app)
            deps = getattr(app, "deployments", None) or {}
            for name in deps:
                if name.startswith(LLM_SERVER_PREFIX):
                    self._handles[name[len(LLM_SERVER_PREFIX):]] = \
                        serve.get_deployment_handle(name, self._app).stats
        out = {}
        for model, h in self._handles.items():
            resp = h.remote()
            out[model] = resp.result(timeout_s=updater.READ_TIMEOUT)
        return out

    def _ingest(self, state: dict) -> None:
        self.error = state.get("llm_error")
        if self.error is not None:
            return
        self.models = state.get("llm") or {}
        point = RL.sample(self.models, state.get("time") or time.time())
        if self.samples and point["t"] - self.samples[-1]["t"] < 0.1:
            self.samples[-1] = point
        else:
            self.samples.append(point)

    # ------------------------------------------------------------ drawing
    def _build(self, w):
        self._header = w.HTML()
        self._box = card_box(w)
        return w.VBox([self._header, self._box, self._status_w])

    def _now(self, state: dict):
        return state.get("time") or (self.samples[-1]["t"] if self.samples else None)

    def _update(self, state: dict) -> None:
        set_value(self._header, RL.llm_header(self.models, self.error))
        set_cards(self._box, self._cards, RL.llm_cards(self.models, list(self.samples),
                                                       self._now(state), self.window_s))

    def _render(self, state: dict) -> str:
        return RL.llm_html(self.models, list(self.samples), self._now(state), self.window_s,
                           self.error)

    def _text(self, state: dict) -> str:
        return RL.llm_text(self.models)
