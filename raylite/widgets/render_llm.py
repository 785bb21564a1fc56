"""Pure rendering of LLM engines: per model its numbers now (tokens/s, running and
waiting sequences, KV blocks in use, prefix-cache hit rate, time to first token,
preemptions) and charts over time (tokens/s; sequences running and waiting; KV blocks
used of the total, preemptions marked).

Input: ``{model_id: stats}`` where ``stats`` is what ``LLMEngine.stats()`` (or an
LLMServer replica's ``stats``) returns; the history is a list of samples the view keeps
(:func:`sample`). Every key is read defensively.
"""

from __future__ import annotations

import time

from raylite.widgets import render as R

TOKENS_COLOR, RUNNING_COLOR, WAITING_COLOR = R.PALETTE[0], R.GREEN, R.ORANGE
KV_COLOR, PREEMPT_COLOR = R.PALETTE[4], R.RED


def _num(x, default=0.0) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else default


def numbers(stats: dict | None) -> dict:
    s = stats if isinstance(stats, dict) else {}
    ttft = s.get("ttft_p50_s")
    return {"tokens_per_s": _num(s.get("tokens_per_s")), "running": int(_num(s.get("running"))),
            "waiting": int(_num(s.get("waiting"))),
            "kv_used": int(_num(s.get("kv_blocks_used"))),
            "kv_total": int(_num(s.get("kv_blocks_total"))),
            "kv_cached": int(_num(s.get("kv_blocks_cached"))),
            "hit_rate": _num(s.get("prefix_cache_hit_rate")),
            "ttft_s": _num(ttft, None) if ttft is not None else None,
            "preemptions": int(_num(s.get("preemptions"))),
            "generated": int(_num(s.get("generated_tokens"))),
            "finished": int(_num(s.get("finished")))}


def sample(models: dict, t: float) -> dict:
    """One point of every model's charts: ``{"t", "models": {id: numbers}}``."""
    return {"t": t, "models": {m: numbers(s) for m, s in (models or {}).items()}}


def chart_svg(samples: list[dict], model: str, now: float | None = None,
              window_s: float = 60.0, width: int = 430) -> str:
    """Three stacked panels over the last ``window_s`` seconds: tokens/s; running and
    waiting sequences; KV blocks in use (of the total; a red tick where a preemption
    happened). The peak KV use is the SVG's ``data-peak-kv``."""
    pts = [(s["t"], s["models"][model]) for s in samples if model in s.get("models", {})]
    now = now if now is not None else (pts[-1][0] if pts else time.time())
    span = min(window_s, max(20.0, now - (pts[0][0] if pts else now)))
    t0 = now - span
    pts = [p for p in pts if p[0] >= t0 - 5]
    left, right, h, gap = 34, 10, 44, 24
    tops = [20, 20 + h + gap, 20 + 2 * (h + gap)]
    pw = width - left - right
    last = pts[-1][1] if pts else numbers({})
    tmax = max([1.0] + [d["tokens_per_s"] for _, d in pts])
    smax = max([1] + [d["running"] + d["waiting"] for _, d in pts])
    kmax = max([1] + [d["kv_total"] for _, d in pts])

    def x(t):
        return left + pw * (min(max(t, t0), now) - t0) / span

    def yy(top, vmax):
        return lambda v: top + h - h * v / vmax

    yt, ys, yk = yy(tops[0], tmax), yy(tops[1], smax), yy(tops[2], kmax)
    peak = max((d["kv_used"] for _, d in pts), default=0)
    out = [R.svg_open(width, tops[2] + h + 20, "raylite-llm-chart", f'data-peak-kv="{peak}"'),
           R.legend([(f"tokens/s ({last['tokens_per_s']:.0f})", TOKENS_COLOR)], left, 3),
           R.y_grid(int(tmax) or 1, yt, left, width - right, max_ticks=2, steps=2),
           R.legend([(f"running ({last['running']})", RUNNING_COLOR),
                     (f"waiting ({last['waiting']})", WAITING_COLOR)], left, tops[1] - 17),
           R.y_grid(smax, ys, left, width - right, max_ticks=3, steps=2),
           R.legend([(f"KV blocks used ({last['kv_used']}/{last['kv_total']})", KV_COLOR),
                     (f"preemptions ({last['preemptions']})", PREEMPT_COLOR)],
                    left, tops[2] - 17),
           R.y_grid(kmax, yk, left, width - right, max_ticks=2, steps=2)]
    if pts:
        xs = [x(t) for t, _ in pts]
        both = list(zip(xs, pts, strict=True))
        out += [
            R.step_line([(px, yt(d["tokens_per_s"])) for px, (_, d) in both], TOKENS_COLOR,
                        "tokens/s", cls="raylite-tokens", pre=True),
            R.step_area([(px, ys(d["running"] + d["waiting"])) for px, (_, d) in both],
                        ys(0), WAITING_COLOR, "waiting", "raylite-waiting", pre=True),
            R.step_area([(px, ys(d["running"])) for px, (_, d) in both], ys(0),
                        RUNNING_COLOR, "running", "raylite-running", pre=True),
            R.step_area([(px, yk(d["kv_used"])) for px, (_, d) in both], yk(0), KV_COLOR,
                        "KV blocks used", "raylite-kv", pre=True)]
        prev = None
        for px, (_, d) in both:
            if prev is not None and d["preemptions"] > prev:
                out.append(f'<line class="raylite-preempt" x1="{px:.1f}" x2="{px:.1f}" '
                           f'y1="{tops[2]}" y2="{tops[2] + h}" stroke="{PREEMPT_COLOR}" '
                           f'stroke-width="1.5"><title>{d["preemptions"] - prev} '
                           f"preempted</title></line>")
            prev = d["preemptions"]
    out += [R.time_axis(x, now, span, left, width - right, tops[2] + h), "</svg>"]
    return "".join(out)


def _kv_bar(n: dict) -> str:
    total = n["kv_total"] or 1
    return R.bar("KV", n["kv_used"], total, f"{n['kv_used']}/{n['kv_total']} blocks"
                 + (f" ({n['kv_cached']} cached)" if n["kv_cached"] else ""), KV_COLOR)


def model_card(model: str, stats: dict | None, samples: list[dict], now=None,
               window_s: float = 60.0) -> str:
    n = numbers(stats)
    ttft = "–" if n["ttft_s"] is None else f"{n['ttft_s'] * 1000:.0f} ms"
    return (f'<div class="raylite-llm-model" data-model="{R.esc(model)}" '
            f'style="border:{R.BORDER};border-radius:6px;padding:6px 8px;margin:0 8px 8px 0;'
            f'{R.FONT};color:inherit;max-width:450px"><b>{R.esc(model)}</b>'
            f'<div class="raylite-llm-numbers"><b>{n["tokens_per_s"]:.0f}</b> tokens/s · '
            f'{n["running"]} running · {n["waiting"]} waiting · prefix hits '
            f'{n["hit_rate"] * 100:.0f}% · TTFT p50 {ttft} · {n["preemptions"]} preempted · '
            f'{n["generated"]} tokens</div>{_kv_bar(n)}'
            + chart_svg(samples, model, now, window_s) + "</div>")


def llm_header(models: dict | None, error: str | None = None) -> str:
    models = models or {}
    ns = [numbers(s) for s in models.values()]
    parts = ["<b>llm</b>", R.plural(len(models), "model")]
    if ns:
        parts += [f"{sum(n['tokens_per_s'] for n in ns):.0f} tokens/s",
                  f"{sum(n['running'] for n in ns)} running, "
                  f"{sum(n['waiting'] for n in ns)} waiting"]
    else:
        parts.append("no engine found yet")
    if error:
        parts.append(f'<span style="color:{R.RED}">cannot read the engines: {R.esc(error)}'
                     "</span>")
    return f'<div style="{R.FONT};margin:2px 0 4px">' + " · ".join(parts) + "</div>"


def llm_cards(models: dict | None, samples: list[dict], now=None, window_s=60.0) -> dict:
    return {m: model_card(m, s, samples, now, window_s) for m, s in (models or {}).items()}


def llm_html(models: dict | None, samples: list[dict], now=None, window_s: float = 60.0,
             error: str | None = None) -> str:
    """The whole LLMView as one static HTML string."""
    return (f'<div class="raylite-llm">{llm_header(models, error)}'
            f"{R.flex(llm_cards(models, samples, now, window_s).values())}</div>")


def llm_text(models: dict | None) -> str:
    lines = []
    for m, s in (models or {}).items():
        n = numbers(s)
        lines.append(f"  {m}: {n['tokens_per_s']:.0f} tokens/s, {n['running']} running, "
                     f"{n['waiting']} waiting, KV {n['kv_used']}/{n['kv_total']}, prefix "
                     f"hits {n['hit_rate'] * 100:.0f}%, {n['preemptions']} preempted")
    return "\n".join(lines) or "  no engines"
