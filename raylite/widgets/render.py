"""Pure rendering: state dicts (as ``raylite.util.state._state`` returns them) to HTML.

Nothing here talks to the cluster or imports ipywidgets, so every view can be tested
without a browser, and the same strings serve the live widgets and the static fallback
(GitHub, nbviewer, plain Python). Styles are inline (a notebook output has no stylesheet
of ours), neutral on light and dark themes: text inherits the page's colour, tracks and
borders are translucent grey, fills are mid-tone colours readable on both.
"""

from __future__ import annotations

import html
import math
import re
import time
from collections import Counter

# Tableau 10: distinct, and readable on light and dark backgrounds.
PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac"]
RED, GREEN, ORANGE, GREY = "#e15759", "#59a14f", "#f28e2b", "rgba(127,127,127,.55)"
SLATE = "#7f7f7f"  # a solid grey, for badges with white text
CATEGORY = [c for c in PALETTE if c != RED]  # colours for groups and names: red means failure
RESOURCE_COLORS = {"CPU": PALETTE[0], "GPU": PALETTE[2], "memory": PALETTE[6]}
STORE_COLOR = PALETTE[4]
FONT = "font:12px/1.4 var(--jp-ui-font-family,system-ui,-apple-system,sans-serif)"
BORDER = "1px solid rgba(127,127,127,.35)"
CARD = (f"border:{BORDER};border-radius:6px;padding:8px 10px;margin:0 8px 8px 0;"
        f"min-width:230px;max-width:300px;box-sizing:border-box;{FONT};color:inherit")
TRACK = "background:rgba(127,127,127,.18);border-radius:4px;overflow:hidden"
BUSY_WORKERS = ("leased", "actor")
_BYTES = ("memory", "object_store_memory")


def esc(value) -> str:
    """HTML-escape any value (user text: names, labels, reasons)."""
    return html.escape(str(value), quote=True)


def fmt_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def fmt_amount(resource: str, value: float) -> str:
    """A resource amount as people read it: bytes for memory, else a short number."""
    if resource in _BYTES:
        return fmt_bytes(value)
    return f"{value:g}"


def fmt_resources(res: dict) -> str:
    """{'CPU': 2, 'memory': 1024} -> 'CPU 2, memory 1.0 KiB'."""
    return ", ".join(f"{k} {fmt_amount(k, v)}" for k, v in (res or {}).items())


def short(ident, n: int = 8) -> str:
    """A short form of an id for display (node ids like 'node0-fc2bf7' stay whole)."""
    s = str(ident)
    return s if len(s) <= 14 else s[:n]


def user_labels(labels: dict) -> dict:
    """Labels minus the ones raylite sets that the card already shows (node id)."""
    return {k: v for k, v in (labels or {}).items() if k != "raylite.io/node-id"}


def ordered_nodes(nodes) -> list[dict]:
    """Nodes in a stable, natural order of their ids (node2 before node10), whatever
    order they registered in."""
    def key(n):
        return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(n.get("node_id")))]
    return sorted(nodes or (), key=key)


def chip(text: str, color: str = "rgba(127,127,127,.6)", dashed: bool = False) -> str:
    """A rounded outline around short text (labels); ``text`` is already HTML."""
    style = "dashed" if dashed else "solid"
    return (f'<span style="display:inline-block;border:1px {style} {color};border-radius:9px;'
            f'padding:0 6px;margin:1px 3px 1px 0;white-space:nowrap">{text}</span>')


def badge(text: str, color: str) -> str:
    """White text on a solid colour (states: alive, dead, CREATED...)."""
    return (f'<span style="background:{color};color:#fff;border-radius:3px;padding:0 5px;'
            f'font-size:11px;font-weight:600">{esc(text)}</span>')


def bar(label: str, used: float, total: float, text: str, color: str = PALETTE[0]) -> str:
    """A labelled horizontal bar, ``used / total`` filled (a width in percent)."""
    frac = 0.0 if not total else max(0.0, min(1.0, used / total))
    fill = ORANGE if frac >= 0.999 and total else color  # saturated: busy, not an error
    return (f'<div style="display:flex;align-items:center;gap:6px;margin:2px 0">'
            f'<span style="width:58px;overflow:hidden;text-overflow:ellipsis;'
            f'white-space:nowrap" title="{esc(label)}">{esc(label)}</span>'
            f'<div style="flex:1;height:9px;{TRACK}"><div style="width:{frac * 100:.1f}%;'
            f'height:100%;background:{fill}"></div></div>'
            f'<span style="flex:none;width:96px;text-align:right;white-space:nowrap">'
            f'{esc(text)}</span></div>')


def counts_text(counter: Counter, limit: int = 4) -> str:
    """Counter({'f': 3, 'g': 1}) -> 'f ×3, g'."""
    parts = [f"{k} ×{n}" if n > 1 else str(k) for k, n in counter.most_common(limit)]
    if len(counter) > limit:
        parts.append(f"+{len(counter) - limit} more")
    return ", ".join(parts)


def plural(n: int, word: str) -> str:
    """(1, 'task') -> '1 task'; (2, 'task') -> '2 tasks'."""
    return f"{n} {word}{'s' * (n != 1)}"


def stamp(t: float | None = None) -> str:
    """A wall-clock time as HH:MM:SS (local time)."""
    return time.strftime("%H:%M:%S", time.localtime(t if t is not None else time.time()))


# ------------------------------------------------------------------------ cluster
def running_by_node(tasks, workers=None) -> dict[str, Counter]:
    """Task names running on each node: ``{node_id: Counter(name)}`` from task records
    in state RUNNING. With ``workers`` (the state's worker records), a task counts only
    while its worker is busy, which drops records whose end was never reported."""
    busy = None
    if workers is not None:
        busy = {w["worker_id"] for w in workers if w.get("state") in BUSY_WORKERS}
    out: dict[str, Counter] = {}
    for t in tasks:
        if t.get("state") != "RUNNING" or t.get("node_id") is None:
            continue
        if busy is not None and t.get("worker_id") not in busy:
            continue
        out.setdefault(t["node_id"], Counter())[task_name(t.get("name"))] += 1
    return out


def task_name(name) -> str:
    """A task's name as shown: 'test_x.<locals>.f' -> 'f'."""
    return str(name or "?").rsplit("<locals>.", 1)[-1]


def node_card(node: dict, workers=(), actors=(), running: Counter | None = None) -> str:
    """One node as a card: id, type, alive/dead, a bar per resource (used / total), the
    object store, labels, workers by state, running tasks and actors."""
    alive = node.get("alive", True)
    nid = node.get("node_id", "?")
    head = (f'<div style="display:flex;justify-content:space-between;align-items:center;'
            f'gap:6px;margin-bottom:4px"><b title="{esc(nid)}">{esc(nid)}</b>'
            f'{badge("alive", GREEN) if alive else badge("dead", RED)}</div>')
    sub = [esc(node["node_type"])] if node.get("node_type") else []
    if node.get("host"):
        sub.append(esc(node["host"]))
    if alive and node.get("idle_s"):
        sub.append(f"idle {node['idle_s']:.0f}s")
    rows = [head]
    if sub:
        rows.append(f'<div style="opacity:.7;margin-bottom:3px">{" · ".join(sub)}</div>')
    total, avail = node.get("resources") or {}, node.get("available") or {}
    for k, tot in total.items():
        used = tot - avail.get(k, 0.0) if alive else 0.0
        rows.append(bar(k, used, tot, f"{fmt_amount(k, used)}/{fmt_amount(k, tot)}",
                        RESOURCE_COLORS.get(k, PALETTE[8])))
    cap, sused = node.get("store_capacity") or 0, node.get("store_used") or 0
    rows.append(bar("store", sused, cap, f"{fmt_bytes(sused)}" +
                    (f"/{fmt_bytes(cap)}" if cap else ""), STORE_COLOR))
    labels = user_labels(node.get("labels") or {})
    if labels:
        rows.append('<div style="margin-top:4px">' + "".join(
            chip(f"{esc(k)}={esc(v)}") for k, v in labels.items()) + "</div>")
    by_state = Counter(w.get("state", "?") for w in workers)
    if by_state:
        wtxt = ", ".join(f"{n} {s}" for s, n in sorted(by_state.items()))
        rows.append(f"<div>workers: {sum(by_state.values())} ({esc(wtxt)})</div>")
    else:
        rows.append("<div>workers: 0</div>")
    running = running or Counter()
    rtxt = f" ({esc(counts_text(running))})" if running else ""
    rows.append(f"<div>running tasks: <b>{sum(running.values())}</b>{rtxt}</div>")
    live_actors = [a for a in actors if a.get("state") != "DEAD"]
    if live_actors:
        names = Counter(a.get("name") or a.get("class_name") or "?" for a in live_actors)
        rows.append(f"<div>actors: {len(live_actors)} ({esc(counts_text(names))})</div>")
    style = CARD + ("" if alive else ";opacity:.55;border-style:dashed")
    return f'<div class="raylite-node" data-node-id="{esc(nid)}" style="{style}">' + \
        "".join(rows) + "</div>"


def cluster_cards(state: dict, running: dict[str, Counter] | None = None) -> dict[str, str]:
    """``{node_id: card html}`` in the order of :func:`ordered_nodes`."""
    workers, actors = state.get("workers") or [], state.get("actors") or []
    running = running if running is not None else {}
    cards = {}
    for n in ordered_nodes(state.get("nodes")):
        nid = n.get("node_id")
        cards[nid] = node_card(n, [w for w in workers if w.get("node_id") == nid],
                               [a for a in actors if a.get("node_id") == nid],
                               running.get(nid))
    return cards


def cluster_header(state: dict, running: dict[str, Counter] | None = None) -> str:
    """One line over the cards: nodes alive/dead, cluster CPU/GPU use, tasks, demand."""
    nodes = state.get("nodes") or []
    alive = [n for n in nodes if n.get("alive", True)]
    parts = [f"<b>raylite cluster</b> · {plural(len(alive), 'node')} alive"]
    if len(nodes) > len(alive):
        parts[-1] += f", {len(nodes) - len(alive)} dead"
    for k in ("CPU", "GPU"):
        tot = sum((n.get("resources") or {}).get(k, 0.0) for n in alive)
        if tot:
            used = tot - sum((n.get("available") or {}).get(k, 0.0) for n in alive)
            parts.append(f"{k} {used:g}/{tot:g} used")
    if running is not None:
        parts.append(plural(sum(sum(c.values()) for c in running.values()), "task") +
                     " running")
    actors = [a for a in state.get("actors") or [] if a.get("state") == "ALIVE"]
    if state.get("actors") is not None:
        parts.append(plural(len(actors), "actor"))
    demand = state.get("demand") or {}
    pending = len(demand.get("requests") or []) + len(demand.get("placement_groups") or [])
    if pending:
        parts.append(f'<span style="color:{PALETTE[1]}">{pending} pending</span>')
    return f'<div style="{FONT};margin:2px 0 6px">' + " · ".join(parts) + "</div>"


def flex(items) -> str:
    """Cards side by side, wrapping to the next row."""
    return ('<div style="display:flex;flex-wrap:wrap;align-items:flex-start">' +
            "".join(items) + "</div>")


def cluster_html(state: dict, running: dict[str, Counter] | None = None) -> str:
    """The whole ClusterView as one static HTML string."""
    if running is None and state.get("tasks") is not None:
        running = running_by_node(state["tasks"], state.get("workers"))
    cards = cluster_cards(state, running)
    body = flex(cards.values()) if cards else f'<div style="{FONT}">no nodes</div>'
    return f'<div class="raylite-cluster">{cluster_header(state, running)}{body}</div>'


def svg_open(width: int, height: int, cls: str, attrs: str = "") -> str:
    """An inline SVG element that scales down to narrow outputs; text in the page's
    colour (``currentColor``). ``attrs``: more attributes (``data-...``), as HTML."""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" class="{cls}" {attrs + " " if attrs else ""}'
            f'style="{FONT};font-size:11px;max-width:100%;height:auto">')


def message(text: str, muted: bool = True) -> str:
    """A one-line note (status footers, 'not connected')."""
    return f'<div style="{FONT};opacity:{0.65 if muted else 1}">{esc(text)}</div>'


# ------------------------------------------------------------------ charts over time
def _steps(points, pre: bool) -> str:
    """A step path's segments after its first point: each value holds until the next
    sample, or with ``pre`` from the sample before (so the latest value shows)."""
    if pre:
        return "".join(f"V{py:.1f}H{px:.1f}" for px, py in points[1:])
    return "".join(f"H{px:.1f}V{py:.1f}" for px, py in points[1:])


def step_line(points, color: str, title: str, dashed: bool = False, cls: str = "",
              pre: bool = False) -> str:
    """A step line through ``[(x, y), ...]`` (see :func:`_steps` for ``pre``)."""
    if not points:
        return ""
    d = f"M{points[0][0]:.1f},{points[0][1]:.1f}" + _steps(points, pre)
    dash = ' stroke-dasharray="4 3" stroke-opacity=".7"' if dashed else ""
    klass = f' class="{cls}"' if cls else ""
    return (f'<path d="{d}" fill="none" stroke="{color}" stroke-width="2"{dash}{klass}>'
            f"<title>{esc(title)}</title></path>")


def step_area(points, base: float, color: str, title: str, cls: str = "",
              pre: bool = False) -> str:
    """The area under a step line, down to ``base`` (a y coordinate)."""
    if not points:
        return ""
    d = f"M{points[0][0]:.1f},{base:.1f}V{points[0][1]:.1f}" + _steps(points, pre) + \
        f"V{base:.1f}Z"
    klass = f' class="{cls}"' if cls else ""
    return (f'<path d="{d}" fill="{color}" fill-opacity=".25" stroke="{color}" '
            f'stroke-width="1.5"{klass}><title>{esc(title)}</title></path>')


def y_grid(ymax: int, y, x1: float, x2: float, max_ticks: int = 8, steps: int = 4) -> str:
    """Horizontal grid lines with their values on the left, for counts 0..ymax (every
    count up to ``max_ticks``, else about ``steps`` steps)."""
    ticks = range(ymax + 1) if ymax <= max_ticks else \
        range(0, ymax + 1, max(1, math.ceil(ymax / steps)))
    return "".join(
        f'<line x1="{x1}" x2="{x2}" y1="{y(i):.1f}" y2="{y(i):.1f}" stroke="currentColor" '
        f'stroke-opacity=".12"/><text x="{x1 - 6}" y="{y(i) + 4:.1f}" text-anchor="end" '
        f'fill="currentColor">{i}</text>' for i in ticks)


def time_axis(x, now: float, span: float, x1: float, x2: float, y: float) -> str:
    """A time axis at height ``y``: "now" at the right, "-30s"... to the left."""
    out = [f'<line x1="{x1}" x2="{x2}" y1="{y}" y2="{y}" stroke="currentColor" '
           f'stroke-opacity=".5"/>']
    step = next((s for s in (5, 10, 15, 30, 60, 120, 300, 600) if span / s <= 6), 1200)
    k = 0.0
    while k <= span + 1e-9:
        out.append(f'<text x="{x(now - k):.1f}" y="{y + 14}" text-anchor="middle" '
                   f'fill="currentColor" fill-opacity=".7">{"now" if k == 0 else f"-{k:g}s"}'
                   f"</text>")
        k += step
    return "".join(out)


def legend(items, x: float, y: float = 6) -> str:
    """Colour swatches with their names in a row, from ``x``: ``[(name, colour), ...]``."""
    out = []
    for name, color in items:
        out.append(f'<rect x="{x}" y="{y}" width="10" height="10" fill="{color}"/>'
                   f'<text x="{x + 14}" y="{y + 9}" fill="currentColor">{esc(name)}</text>')
        x += 24 + 7 * len(name)
    return "".join(out)
