"""Pure rendering of a Train run: per-rank metric curves (SVG), where each rank runs
(node, labels, pid), the registered checkpoints with their scores, and the restarts.

Input: a run's snapshot as the coordinator actor returns it (``snapshot()``): ``name``,
``state``, ``attempt``, ``workers`` (rank, node_id, labels, pid, address), ``restarts``
(time, reason), ``checkpoints`` (dir_name, metrics, pending, deleted, attempt),
``rank_metrics`` ({rank: [(time, seq, attempt, metrics), ...]}), ``score_attribute``,
``path``, ``error``. Every key is read defensively.
"""

from __future__ import annotations

from raylite.train._internal.metrics import lookup
from raylite.widgets import render as R

STATE_COLORS = {"RUNNING": R.GREEN, "FINISHED": R.PALETTE[0], "RESTARTING": R.ORANGE,
                "ERRORED": R.RED, "STARTING": R.SLATE}
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 560, 190, 48, 12, 22, 24


def value(metrics, name: str):
    """``name`` (a key or a ``/`` path) in ``metrics`` as a float, or None."""
    try:
        v = lookup(metrics or {}, name)
    except (KeyError, TypeError):
        return None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def pick_metric(run: dict, metric: str | None) -> str | None:
    """The metric to draw: the one asked for, else ``loss`` if reported, else the first
    numeric top-level metric of rank 0 that is not a counter (epoch, step, ...)."""
    if metric:
        return metric
    for _, _, _, m in (run.get("rank_metrics") or {}).get(0, [])[-1:]:
        if value(m, "loss") is not None:
            return "loss"
        for k, v in m.items():
            if isinstance(v, float) and k not in ("epoch", "step", "iter", "iteration"):
                return k
    return None


def series(run: dict, metric: str) -> dict[int, list[tuple[int, float]]]:
    """Per rank, ``[(report number, value), ...]`` (report numbers go on across
    restarts, so a resumed rank continues its curve)."""
    out = {}
    for rank, points in (run.get("rank_metrics") or {}).items():
        pts = [(int(seq), v) for _, seq, _, m in points
               if (v := value(m, metric)) is not None]
        if pts:
            out[int(rank)] = pts
    return out


def curves_svg(run: dict, metric: str | None) -> str:
    metric = pick_metric(run, metric)
    data = series(run, metric) if metric else {}
    if not data:
        return R.message(f"no {metric or 'numeric'} metric reported yet")
    xs = [x for pts in data.values() for x, _ in pts]
    ys = [y for pts in data.values() for _, y in pts]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 1, y1 + 1

    def X(v):
        return PAD_L + (v - x0) / (x1 - x0) * (W - PAD_L - PAD_R)

    def Y(v):
        return PAD_T + (y1 - v) / (y1 - y0) * (H - PAD_T - PAD_B)

    parts = [R.svg_open(W, H, "raylite-train-curves", f'data-metric="{R.esc(metric)}"')]
    for i in range(5):
        v = y0 + (y1 - y0) * i / 4
        parts.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" '
                     f'stroke="currentColor" stroke-opacity=".12"/><text x="{PAD_L - 4}" '
                     f'y="{Y(v) + 4:.1f}" text-anchor="end" fill="currentColor">{v:.3g}</text>')
    for r in _restart_seqs(run):
        if x0 <= r <= x1:
            parts.append(f'<line class="raylite-restart" x1="{X(r):.1f}" x2="{X(r):.1f}" '
                         f'y1="{PAD_T}" y2="{H - PAD_B}" stroke="{R.RED}" '
                         f'stroke-dasharray="4 3"><title>restart</title></line>')
    for rank, pts in sorted(data.items()):
        color = R.CATEGORY[rank % len(R.CATEGORY)]
        d = " ".join(f"{'M' if i == 0 else 'L'}{X(x):.1f},{Y(y):.1f}"
                     for i, (x, y) in enumerate(pts))
        parts.append(f'<path class="raylite-rank" data-rank="{rank}" d="{d}" fill="none" '
                     f'stroke="{color}" stroke-width="1.8"><title>rank {rank}: '
                     f'{pts[-1][1]:.4g}</title></path>')
    parts.append(R.legend([(f"rank {r}", R.CATEGORY[r % len(R.CATEGORY)])
                           for r in sorted(data)], PAD_L, 4))
    parts.append(f'<text x="{W - PAD_R}" y="{H - 6}" text-anchor="end" fill="currentColor" '
                 f'fill-opacity=".7">{R.esc(metric)} by report</text></svg>')
    return "".join(parts)


def _restart_seqs(run: dict) -> list[int]:
    """The report number each attempt after the first started at."""
    firsts: dict[int, int] = {}
    for points in (run.get("rank_metrics") or {}).values():
        for _, seq, attempt, _ in points:
            firsts[attempt] = min(firsts.get(attempt, seq), seq)
    return [s for a, s in sorted(firsts.items()) if a > min(firsts)] if firsts else []


def header(run: dict | None, error: str | None = None) -> str:
    if run is None:
        return R.message(error or "no training run yet")
    state = run.get("state") or "?"
    restarts = len(run.get("restarts") or [])
    bits = [f"<b>{R.esc(run.get('name'))}</b>", R.badge(state, STATE_COLORS.get(state, R.SLATE)),
            R.plural(run.get("world_size") or 0, "worker"),
            f"attempt {run.get('attempt')}", R.plural(restarts, "restart"),
            f"<code>{R.esc(run.get('path'))}</code>"]
    out = f'<div style="{R.FONT}">' + " &middot; ".join(bits) + "</div>"
    if run.get("error"):
        out += f'<div style="{R.FONT};color:{R.RED}">{R.esc(run["error"])[:600]}</div>'
    return out


def workers_html(run: dict) -> str:
    rows = []
    last = {int(r): pts[-1][3] for r, pts in (run.get("rank_metrics") or {}).items() if pts}
    for w in run.get("workers") or []:
        labels = ", ".join(f"{k}={v}" for k, v in R.user_labels(w.get("labels") or {}).items())
        latest = last.get(w.get("rank"), {})
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in list(latest.items())[:4]
                          if isinstance(v, (int, float, str)))
        rows.append(f"<tr><td>{w.get('rank')}</td><td>{R.esc(R.short(w.get('node_id'), 14))}"
                    f"</td><td>{R.esc(labels)}</td><td>{w.get('pid')}</td>"
                    f"<td>{R.esc(shown)}</td></tr>")
    return (f'<table class="raylite-train-workers" style="{R.FONT}"><tr><th>rank</th>'
            f"<th>node</th><th>labels</th><th>pid</th><th>last report</th></tr>"
            + "".join(rows) + "</table>")


def checkpoints_html(run: dict) -> str:
    attr = run.get("score_attribute")
    ckpts = run.get("checkpoints") or []
    if not ckpts:
        return R.message("no checkpoints yet")
    rows = []
    for c in ckpts[-12:]:
        score = value(c.get("metrics"), attr) if attr else None
        state = "deleted" if c.get("deleted") else ("validating" if c.get("pending")
                                                    else "kept")
        metrics = ", ".join(f"{k}={v}" for k, v in (c.get("metrics") or {}).items())[:120]
        rows.append(f'<tr class="raylite-ckpt" data-state="{state}"><td>'
                    f"{R.esc(c.get('dir_name'))}</td><td>{state}</td>"
                    f"<td>{'' if score is None else f'{score:.4g}'}</td>"
                    f"<td>{R.esc(metrics)}</td></tr>")
    return (f'<table style="{R.FONT}"><tr><th>checkpoint</th><th></th>'
            f"<th>{R.esc(attr or 'score')}</th><th>metrics</th></tr>" + "".join(rows)
            + "</table>")


def train_html(run: dict | None, metric: str | None = None, error: str | None = None) -> str:
    if run is None:
        return header(None, error)
    return (f'<div class="raylite-train">{header(run, error)}{curves_svg(run, metric)}'
            f"{workers_html(run)}{checkpoints_html(run)}</div>")


def train_text(run: dict | None) -> str:
    if run is None:
        return "no training run"
    return (f"{run.get('name')}: {run.get('state')}, {run.get('world_size')} workers, "
            f"{len(run.get('checkpoints') or [])} checkpoints, "
            f"{len(run.get('restarts') or [])} restarts")
