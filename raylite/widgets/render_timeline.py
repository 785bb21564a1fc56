"""Pure rendering of task timelines: a Gantt chart (SVG), one lane per worker.

Input: task records as ``raylite.timeline()`` rows or the state API's task records
(``name``, ``node_id``, ``worker_id``, ``start``, ``end``, ``state``, ``error``; ``sent``
stands in for ``start`` while a task runs, as its worker reports the start time only
with the result).
"""

from __future__ import annotations

import time

from raylite.widgets import render as R

LANE_H, LEFT, TOP = 16, 150, 30


def _val(r: dict, key: str):
    v = r.get(key)
    return None if v is None or v != v else v  # NaN (from a DataFrame) is missing


def bars(records, now: float | None = None) -> list[dict]:
    """The records that have started, as ``{name, lane, start, end, running, failed}``
    (``end`` is ``now`` for a running task), oldest first."""
    now = now if now is not None else time.time()
    out = []
    for r in records:
        start = _val(r, "start")
        running = _val(r, "end") is None
        if start is None and r.get("state") == "RUNNING":
            start = _val(r, "sent")
        if start is None or r.get("node_id") is None:
            continue
        end = now if running else _val(r, "end")
        failed = r.get("state") == "FAILED" or bool(_val(r, "error"))
        out.append({"name": R.task_name(r.get("name")), "start": float(start),
                    "end": max(float(end), float(start)), "running": running,
                    "failed": failed, "lane": (str(r["node_id"]), str(_val(r, "worker_id"))),
                    "state": r.get("state") or ("RUNNING" if running else "FINISHED")})
    out.sort(key=lambda b: b["start"])
    return out


def name_colors(items) -> dict[str, str]:
    """A palette colour per task name, by first appearance (red is kept for failures)."""
    out: dict[str, str] = {}
    for b in items:
        if b["name"] not in out:
            out[b["name"]] = R.CATEGORY[len(out) % len(R.CATEGORY)]
    return out


def gantt_svg(records, now: float | None = None, max_bars: int = 2000,
              width: int = 900) -> str:
    """Tasks per worker over time: a lane per (node, worker), a bar per task coloured by
    its name (failed: red outline; running: faded, dashed), hover for details. Only the
    latest ``max_bars`` tasks are drawn."""
    items = bars(records, now)
    dropped = max(0, len(items) - max_bars)
    items = items[dropped:]
    if not items:
        return f'<div style="{R.FONT};opacity:.65">no tasks have run yet</div>'
    order = {n["node_id"]: i for i, n in enumerate(
        R.ordered_nodes({"node_id": b["lane"][0]} for b in items))}
    first: dict = {}
    for b in items:
        first.setdefault(b["lane"], b["start"])
    lanes = sorted(first, key=lambda ln: (order[ln[0]], first[ln]))
    row = {ln: i for i, ln in enumerate(lanes)}
    t0, t1 = items[0]["start"], max(b["end"] for b in items)
    span = max(t1 - t0, 1e-3)
    pw = width - LEFT - 10
    height = TOP + LANE_H * len(lanes) + 24

    def x(t: float) -> float:
        return LEFT + pw * (t - t0) / span

    colors = name_colors(items)
    out = [R.svg_open(width, height, "raylite-gantt")]
    lx = LEFT  # legend: the first names
    for name, color in list(colors.items())[:10]:
        out.append(f'<rect x="{lx}" y="6" width="10" height="10" fill="{color}"/>'
                   f'<text x="{lx + 14}" y="15" fill="currentColor">{R.esc(name)}</text>')
        lx += 24 + 7 * len(name)
    if len(colors) > 10:
        out.append(f'<text x="{lx}" y="15" fill="currentColor">+{len(colors) - 10} more'
                   f"</text>")
    prev_node = None
    for ln in lanes:
        y = TOP + row[ln] * LANE_H
        label = f"{ln[0]} · {R.short(ln[1], 6)}"
        if ln[0] != prev_node and prev_node is not None:
            out.append(f'<line x1="0" x2="{width}" y1="{y}" y2="{y}" stroke="currentColor" '
                       f'stroke-opacity=".25"/>')
        prev_node = ln[0]
        out.append(f'<text x="{LEFT - 6}" y="{y + 12}" text-anchor="end" '
                   f'fill="currentColor" fill-opacity=".8">{R.esc(label)}</text>')
    for b in items:
        y = TOP + row[b["lane"]] * LANE_H + 2
        w = max(1.0, x(b["end"]) - x(b["start"]))
        color = colors[b["name"]]
        extra = f' stroke="{R.RED}" stroke-width="2"' if b["failed"] else ""
        if b["running"]:
            extra += f' fill-opacity=".45" stroke="{color}" stroke-dasharray="3 2"'
        dur = b["end"] - b["start"]
        title = f"{b['name']} · {b['state'].lower()} · {_dur(dur)} · node {b['lane'][0]} · " \
                f"worker {R.short(b['lane'][1], 6)}"
        out.append(f'<rect x="{x(b["start"]):.1f}" y="{y}" width="{w:.1f}" '
                   f'height="{LANE_H - 4}" rx="2" fill="{color}"{extra} class="raylite-task" '
                   f'data-name="{R.esc(b["name"])}"><title>{R.esc(title)}</title></rect>')
    ay = TOP + LANE_H * len(lanes) + 4
    out.append(f'<line x1="{LEFT}" x2="{width - 10}" y1="{ay}" y2="{ay}" '
               f'stroke="currentColor" stroke-opacity=".5"/>')
    step = _nice_step(span)
    k = 0.0
    while k <= span + 1e-9:
        out.append(f'<text x="{x(t0 + k):.1f}" y="{ay + 14}" text-anchor="middle" '
                   f'fill="currentColor" fill-opacity=".7">{_dur(k) if k else "0"}</text>')
        k += step
    out.append("</svg>")
    note = f" (the latest {max_bars} of {max_bars + dropped})" if dropped else ""
    head = (f'<div style="{R.FONT};margin:2px 0 4px"><b>timeline</b> · {len(items)} tasks'
            f"{note} on {len(lanes)} workers over {_dur(span)}</div>")
    return head + "".join(out)


def _dur(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s" if s < 120 else f"{s / 60:.3g} min"


def _nice_step(span: float) -> float:
    raw = span / 6
    mag = 10 ** int(f"{raw:e}".split("e")[1])
    for m in (1, 2, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag
