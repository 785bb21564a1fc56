"""Pure rendering of the autoscaler: a timeline (SVG) of demand and nodes per type with
its decisions, a table of node types, and the decisions with their reasons.

Input: the autoscaler's status (``get_autoscaler_status()``: ``node_types`` with
``running``/``launching``/``availability``, ``unavailable``, ``decisions``...), the
head's ``demand`` section, and a history of samples the view keeps (the status itself is
only the latest report). Every key is read defensively: a field the autoscaler does not
report is left out, never an error.
"""

from __future__ import annotations

import html
import time

from raylite.widgets import render as R

TYPE_COLORS = [R.PALETTE[i] for i in (0, 2, 6, 4, 8, 7, 5, 9)]  # no orange/red: taken
PENDING_COLOR = R.ORANGE
ACTIONS = {  # action -> (marker, colour, label)
    "launch": ("▲", None, "launch"), "node_running": ("●", None, "running"),
    "launch_failed": ("✕", R.RED, "launch failed"), "terminate": ("▼", R.SLATE, "terminate"),
    "node_lost": ("◆", R.SLATE, "lost"), "infeasible": ("!", R.ORANGE, "infeasible"),
}


def _num(x, default=0) -> float:
    return x if isinstance(x, (int, float)) else default


def type_colors(names) -> dict[str, str]:
    """A colour per node type, in the order the types are declared."""
    return {t: TYPE_COLORS[i % len(TYPE_COLORS)] for i, t in enumerate(names)}


def pending_count(state: dict) -> int:
    """Demand waiting for a node: pending requests plus unplaced bundles of pending
    placement groups (from the head's ``demand``, else the autoscaler's summary)."""
    demand = state.get("demand")
    if isinstance(demand, dict):
        bundles = sum(1 for p in demand.get("placement_groups") or ()
                      for b in p.get("bundles") or () if b.get("node_id") is None)
        return len(demand.get("requests") or ()) + bundles
    pend = (state.get("autoscaler") or {}).get("pending")
    if isinstance(pend, dict):
        return int(_num(pend.get("requests")) + _num(pend.get("placement_groups")))
    return int(_num(pend))


def type_counts(state: dict) -> dict[str, list[int]]:
    """``{node type: [running, launching]}`` from the autoscaler's report, else counted
    from the live nodes' node types."""
    status = state.get("autoscaler") or {}
    types = status.get("node_types")
    out: dict[str, list[int]] = {}
    if isinstance(types, dict) and types:
        for t, info in types.items():
            info = info if isinstance(info, dict) else {}
            out[t] = [int(_num(info.get("running"))), int(_num(info.get("launching")))]
        return out
    for n in state.get("nodes") or ():
        if n.get("alive", True) and n.get("node_type"):
            out.setdefault(n["node_type"], [0, 0])[0] += 1
    return out


def unavailable_types(status: dict | None) -> dict[str, dict]:
    """``{node type: {score, last_failure, ...}}`` of the types reported unavailable."""
    un = (status or {}).get("unavailable")
    if isinstance(un, dict):
        return {t: v if isinstance(v, dict) else {"score": v} for t, v in un.items()}
    if isinstance(un, (list, tuple)):
        return {t: {} for t in un}
    return {}


def sample(state: dict, now: float | None = None) -> dict:
    """One point of the timeline from a state read."""
    return {"t": now if now is not None else _num(state.get("time"), time.time()),
            "pending": pending_count(state), "types": type_counts(state),
            "unavailable": sorted(unavailable_types(state.get("autoscaler")))}


def decision_key(d: dict) -> tuple:
    """What makes a decision the same one when it is reported twice."""
    return (d.get("time"), d.get("action"), d.get("node_type"), str(d.get("node_ids")),
            d.get("reason"))


def merge_decisions(known: list[dict], new, limit: int = 500) -> list[dict]:
    """``known`` plus the decisions of ``new`` not seen yet, oldest first, bounded."""
    seen = {decision_key(d) for d in known}
    out = list(known)
    for d in new or ():
        if isinstance(d, dict) and decision_key(d) not in seen:
            seen.add(decision_key(d))
            out.append(d)
    out.sort(key=lambda d: _num(d.get("time")))
    return out[-limit:]


# ------------------------------------------------------------------------ the SVG
def timeline_svg(samples: list[dict], decisions: list[dict], types: list[str],
                 now: float | None = None, window_s: float = 300.0, width: int = 760) -> str:
    """Pending demand (orange area) and nodes per type (a solid line for running, a
    dashed one for running + launching) over the last ``window_s`` seconds; under it one
    lane per node type with its decisions as markers (hover for the reason) and red
    bands while the type was unavailable."""
    now = now if now is not None else (samples[-1]["t"] if samples else time.time())
    first = samples[0]["t"] if samples else now
    span = min(window_s, max(30.0, now - first))
    t0 = now - span
    lanes = list(types) + (["(demand)"] if any(d.get("node_type") is None
                                               for d in decisions) else [])
    left, right, top, plot_h, lane_h = 86, 12, 22, 120, 18
    height = top + plot_h + 22 + lane_h * len(lanes) + 6
    pw = width - left - right
    pts = [s for s in samples if s["t"] >= t0 - 5]
    ymax = max([1] + [s["pending"] for s in pts] +
                [sum(s["types"].get(t, [0, 0])) for s in pts for t in types])

    def x(t: float) -> float:
        return left + pw * (min(max(t, t0), now) - t0) / span

    def y(v: float) -> float:
        return top + plot_h - plot_h * v / ymax

    out = [R.svg_open(width, height, "raylite-autoscaler-timeline"),
           R.y_grid(ymax, y, left, width - right)]
    colors = type_colors(types)
    if pts:
        out.append(R.step_area([(x(s["t"]), y(s["pending"])) for s in pts], y(0),
                               PENDING_COLOR, "pending demand", "raylite-pending"))
        for t in types:
            run = [(x(s["t"]), y(s["types"].get(t, [0, 0])[0])) for s in pts]
            tot = [(x(s["t"]), y(sum(s["types"].get(t, [0, 0])))) for s in pts]
            out.append(R.step_line(tot, colors[t], f"{t}: running + launching", dashed=True))
            out.append(R.step_line(run, colors[t], f"{t}: running"))
    # legend
    out.append(R.legend([("pending demand", PENDING_COLOR)] + [(t, colors[t]) for t in types],
                        left))
    # time axis
    ay = top + plot_h
    out.append(R.time_axis(x, now, span, left, width - right, ay))
    # one lane per type: unavailable bands and decision markers
    for i, lane in enumerate(lanes):
        ly = ay + 22 + i * lane_h
        out.append(f'<text x="{left - 6}" y="{ly + 13}" text-anchor="end" '
                   f'fill="currentColor">{R.esc(lane)}</text><line x1="{left}" '
                   f'x2="{width - right}" y1="{ly + lane_h - 1}" y2="{ly + lane_h - 1}" '
                   f'stroke="currentColor" stroke-opacity=".1"/>')
        for a, b in _spans(pts, lane, now):
            out.append(f'<rect x="{x(a):.1f}" y="{ly + 2}" width="{max(2.0, x(b) - x(a)):.1f}" '
                       f'height="{lane_h - 4}" fill="{R.RED}" fill-opacity=".22">'
                       f"<title>{R.esc(lane)} unavailable</title></rect>")
        last_x = -1e9
        for d in decisions:
            dt = _num(d.get("time"), None)
            if dt is None or dt < t0 or (d.get("node_type") or "(demand)") != lane:
                continue
            mark, color, label = ACTIONS.get(d.get("action"), ("•", None, d.get("action")))
            title = f"{R.stamp(dt)} {label} {d.get('node_type') or ''} " \
                    f"×{d.get('count', '')}: {d.get('reason', '')}"
            mx = last_x = max(x(dt), last_x + 9)  # markers at one time sit side by side
            out.append(f'<text x="{mx:.1f}" y="{ly + 13}" text-anchor="middle" '
                       f'fill="{color or colors.get(lane, R.GREY)}" font-weight="bold" '
                       f'class="raylite-decision" data-action="{R.esc(d.get("action"))}">'
                       f"{mark}<title>{R.esc(title)}</title></text>")
    out.append("</svg>")
    return "".join(out)






def _spans(samples, node_type: str, now: float) -> list[tuple[float, float]]:
    """Time spans in which ``node_type`` was reported unavailable."""
    out, start = [], None
    for s in samples:
        if node_type in s["unavailable"]:
            start = s["t"] if start is None else start
        elif start is not None:
            out.append((start, s["t"]))
            start = None
    if start is not None:
        out.append((start, now))
    return out




# ------------------------------------------------------------------------ tables
def node_types_table(status: dict | None, now: float | None = None) -> str:
    """One row per node type: resources, labels, min/max, running, launching,
    availability score and last failure, launches and failures so far."""
    types = (status or {}).get("node_types")
    if not isinstance(types, dict) or not types:
        return ""
    now = now if now is not None else time.time()
    colors = type_colors(types)
    unavailable = unavailable_types(status)
    td = f'style="padding:2px 8px;border-bottom:{R.BORDER};text-align:left"'
    cols = ("", "node type", "resources", "labels", "min-max", "running", "launching",
            "availability", "launches / failures")
    rows = []
    for t, info in types.items():
        info = info if isinstance(info, dict) else {}
        score = info.get("availability", unavailable.get(t, {}).get("score", 1.0))
        last = info.get("last_failure") or unavailable.get(t, {}).get("last_failure")
        avail = f"{_num(score, 1.0):.2f}"
        if t in unavailable:
            avail = R.badge(f"unavailable {avail}", R.RED)
        if last:
            avail += f' <span style="opacity:.7">failed {max(0, now - last):.0f}s ago</span>'
        labels = ", ".join(f"{k}={v}" for k, v in (info.get("labels") or {}).items())
        rows.append(
            f'<tr data-node-type="{R.esc(t)}"><td {td}><span style="display:inline-block;'
            f'width:12px;height:12px;border-radius:2px;background:{colors[t]}"></span></td>'
            f"<td {td}><b>{R.esc(t)}</b></td>"
            f"<td {td}>{R.esc(R.fmt_resources(info.get('resources')))}</td>"
            f"<td {td}>{R.esc(labels) or '-'}</td><td {td}>"
            f"{R.esc(info.get('min_workers', '?'))}-{R.esc(info.get('max_workers', '?'))}"
            f"</td><td {td}>{R.esc(info.get('running', 0))}</td>"
            f"<td {td}>{R.esc(info.get('launching', 0))}</td><td {td}>{avail}</td>"
            f"<td {td}>{R.esc(info.get('launches', 0))} / {R.esc(info.get('failures', 0))}</td>"
            "</tr>")
    head = "".join(f"<th {td}>{c}</th>" for c in cols)
    return (f'<table class="raylite-node-types" style="{R.FONT};border-collapse:collapse;'
            f'margin:4px 0"><tr>{head}</tr>{"".join(rows)}</table>')


def decisions_list(decisions: list[dict], limit: int = 10) -> str:
    """The latest decisions, newest first, each with its reason."""
    if not decisions:
        return ""
    items = []
    for d in list(reversed(decisions))[:limit]:
        action = d.get("action", "?")
        mark, color, label = ACTIONS.get(action, ("•", None, action))
        color = color or (R.GREEN if action in ("launch", "node_running") else R.SLATE)
        count = d.get("count")
        items.append(
            f'<div class="raylite-decision" style="margin:1px 0"><span style="opacity:.65">'
            f'{R.stamp(_num(d.get("time"), time.time()))}</span> '
            f'{R.badge(f"{mark} {label}", color)}'
            f' <b>{R.esc(d.get("node_type") or "")}</b>{f" ×{count}" if count else ""}'
            f' <span>{R.esc(d.get("reason", ""))}</span></div>')
    return (f'<div style="{R.FONT};margin:4px 0"><b>decisions</b> (latest first)'
            f'{"".join(items)}</div>')


def autoscaler_header(status: dict | None, last: dict | None, note: str | None = None) -> str:
    """One line: running or not, pending demand, autoscaled nodes, unavailable types.
    Without a status: ``note`` (the backend's word on why there is none, e.g. on Ray),
    else how to start raylite's autoscaler."""
    if not status:
        if note:
            return f'<div style="{R.FONT}"><b>autoscaler</b> · {html.escape(note)}</div>'
        return (f'<div style="{R.FONT}"><b>autoscaler</b> · no report yet (start one with '
                f"<code>raylite.autoscaler.start(config)</code> or "
                f"<code>raylite.init(autoscaler=...)</code>)</div>")
    parts = ["<b>autoscaler</b>",
             "running" if status.get("running", True) else "stopped"]
    if last is not None:
        parts.append(f"{last['pending']} pending")
        nodes = sum(r for r, _ in last["types"].values())
        launching = sum(la for _, la in last["types"].values())
        parts.append(f"{nodes} autoscaled node{'s' * (nodes != 1)}" +
                     (f", {launching} launching" if launching else ""))
    un = unavailable_types(status)
    if un:
        parts.append(f'<span style="color:{R.RED}">unavailable: ' + ", ".join(
            f"{R.esc(t)} (score {_num(v.get('score'), 0):.2f})" for t, v in un.items())
            + "</span>")
    infeasible = status.get("infeasible")
    if infeasible:
        parts.append(f'<span style="color:{R.ORANGE}">{len(infeasible)} infeasible shape'
                     f'{"s" * (len(infeasible) != 1)}</span>')
    return f'<div style="{R.FONT};margin:2px 0 6px">' + " · ".join(parts) + "</div>"


def autoscaler_html(status: dict | None, samples: list[dict], decisions: list[dict],
                    now: float | None = None, window_s: float = 300.0,
                    note: str | None = None) -> str:
    """The whole AutoscalerView as one static HTML string."""
    types = list((status or {}).get("node_types") or {}) or \
        sorted({t for s in samples for t in s["types"]})
    svg = timeline_svg(samples, decisions, types, now, window_s) if samples else ""
    return (f'<div class="raylite-autoscaler">'
            f"{autoscaler_header(status, samples[-1] if samples else None, note)}{svg}"
            f"{node_types_table(status, now)}{decisions_list(decisions)}</div>")
