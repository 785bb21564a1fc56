"""Pure rendering of Serve: per deployment a chart (SVG) of its replicas over time against
the target and of its ongoing and queued requests; per application its topology as a
graph (deployments as boxes, handle calls as arrows, the ingress marked).

Input: Serve's status as ``serve.status()`` reads it (the ``ServeStatus`` it returns, or
the controller's dict) or the REST API's ``GET /api/serve/applications/`` payload. Both
hold, per application, ``status``, ``route_prefix``, ``ingress_deployment`` and
``deployment_topology``, and per deployment ``status``, ``target_num_replicas``,
``running_replicas``, ``replica_states``, ``ongoing_requests`` and ``queued_requests``
(raylite's additions to Ray's status). The history behind the charts is a list of
samples the view keeps (:func:`sample`). Every key is read defensively.
"""

from __future__ import annotations

import dataclasses
import math
import time

from raylite.widgets import render as R

STATUS_COLORS = {"HEALTHY": R.GREEN, "RUNNING": R.GREEN, "UPSCALING": R.ORANGE,
                 "DOWNSCALING": R.ORANGE, "UPDATING": R.ORANGE, "DEPLOYING": R.ORANGE,
                 "UNHEALTHY": R.RED, "DEPLOY_FAILED": R.RED, "DELETING": R.SLATE}
TARGET_COLOR, ONGOING_COLOR, QUEUED_COLOR = R.SLATE, R.GREEN, R.ORANGE
DEP_COLORS = [c for c in R.CATEGORY if c not in (R.GREEN, R.ORANGE)]  # those mean load
NODE_W, NODE_H, COL_GAP, ROW_GAP, ENTRY_W = 170, 44, 56, 12, 92


def _num(x, default=0):
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) else default


def normalize(status) -> dict | None:
    """``{"applications": {name: app}, "proxies": {...}}`` from what ``serve.status()``
    returns (a dataclass), the controller's dict, or the REST payload; None for None."""
    if status is None:
        return None
    if dataclasses.is_dataclass(status) and not isinstance(status, type):
        status = dataclasses.asdict(status)
    if not isinstance(status, dict):
        return None
    apps = status.get("applications")
    return {"applications": apps if isinstance(apps, dict) else {},
            "proxies": status.get("proxies") or {}}


def _apps(status) -> dict:
    return (status or {}).get("applications") or {}


# ------------------------------------------------------------------ samples
def dep_sample(d: dict) -> dict:
    """A deployment's numbers at one time: target, running, starting and stopping
    replicas, ongoing and queued requests, status."""
    d = d if isinstance(d, dict) else {}
    states = d.get("replica_states") or {}
    running = int(_num(d.get("running_replicas"), _num(states.get("RUNNING"))))
    return {"status": d.get("status"),
            "target": int(_num(d.get("target_num_replicas"), running)),
            "running": running, "starting": int(_num(states.get("STARTING"))),
            "stopping": int(_num(states.get("STOPPING"))),
            "ongoing": int(_num(d.get("ongoing_requests"))),
            "queued": int(_num(d.get("queued_requests")))}


def sample(status: dict | None, t: float) -> dict:
    """One point of every deployment's chart: ``{"t", "deps": {(app, dep): numbers}}``."""
    return {"t": t, "deps": {(a, n): dep_sample(d) for a, app in _apps(status).items()
                             for n, d in (app.get("deployments") or {}).items()}}


def assign_colors(known: dict, keys) -> dict:
    """``known`` plus a colour for each new deployment key (kept for the view's life, so
    a deployment's chart and its box in the graph keep one colour)."""
    out = dict(known)
    for k in keys:
        if k not in out:
            out[k] = DEP_COLORS[len(out) % len(DEP_COLORS)]
    return out


# ------------------------------------------------------------------ topology
def _topology(app_name: str, app: dict) -> dict:
    """The app's ``deployment_topology``, or one without edges made from its deployments."""
    topo = app.get("deployment_topology") or {}
    if isinstance(topo.get("nodes"), dict) and topo["nodes"]:
        return topo
    ingress = app.get("ingress_deployment")
    return {"app_name": app_name, "ingress_deployment": ingress,
            "nodes": {n: {"name": n, "app_name": app_name, "outbound_deployments": [],
                          "is_ingress": n == ingress} for n in app.get("deployments") or {}}}


def _outbound(node: dict, app_name: str) -> list[tuple[str, str]]:
    return [(o.get("app_name") or app_name, o.get("name")) for o in
            node.get("outbound_deployments") or () if isinstance(o, dict) and o.get("name")]


def layers(topology: dict, app_name: str) -> list[list[tuple[str, str]]]:
    """The graph's columns of ``(app, deployment)`` keys: the ingress, then what it calls,
    and so on (breadth first: a cycle does not loop); deployments that no path from the
    ingress reaches go in the first column, under it. Deployments of other applications
    that a deployment calls are placed too (drawn dashed)."""
    nodes = topology.get("nodes") or {}
    ingress = topology.get("ingress_deployment")
    depth: dict[tuple[str, str], int] = {}
    starts = ([ingress] if ingress in nodes else []) + [n for n in nodes if n != ingress]
    for start in starts:
        if (app_name, start) in depth:
            continue
        depth[(app_name, start)] = 0
        queue = [start]
        while queue:
            name = queue.pop(0)
            for key in _outbound(nodes[name], app_name):
                if key not in depth:
                    depth[key] = depth[(app_name, name)] + 1
                    if key[0] == app_name and key[1] in nodes:
                        queue.append(key[1])
    cols: list[list[tuple[str, str]]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for key, d in depth.items():
        cols[d].append(key)
    return cols


def _arrow_head(end, toward) -> str:
    """A filled arrowhead at ``end``, pointing away from ``toward``."""
    (ex, ey), (cx, cy) = end, toward
    dx, dy = ex - cx, ey - cy
    n = math.hypot(dx, dy) or 1.0
    ux, uy = dx / n, dy / n
    pts = [(ex, ey), (ex - 8 * ux + 4 * uy, ey - 8 * uy - 4 * ux),
           (ex - 8 * ux - 4 * uy, ey - 8 * uy + 4 * ux)]
    return "M" + "L".join(f"{px:.1f},{py:.1f}" for px, py in pts) + "Z"


def _edge(a: tuple[float, float], b: tuple[float, float], same: bool) -> tuple:
    """Start, two control points and end of the curve from box ``a`` to box ``b``:
    forward edges leave a box's right side for the next one's left side, edges back
    (or within a column) arc under the boxes, and a call to itself loops over its box."""
    (x1, y1), (x2, y2) = a, b
    if same:
        return ((x1 + NODE_W - 30, y1), (x1 + NODE_W - 30, y1 - 20), (x1 + NODE_W + 20, y1 + 8),
                (x1 + NODE_W, y1 + 12))
    if x2 > x1:
        s, e = (x1 + NODE_W, y1 + NODE_H / 2), (x2, y2 + NODE_H / 2)
        mid = (e[0] - s[0]) / 2
        return s, (s[0] + mid, s[1]), (e[0] - mid, e[1]), e
    s, e = (x1 + NODE_W / 2 - 10, y1 + NODE_H), (x2 + NODE_W / 2 + 10, y2 + NODE_H)
    return s, (s[0], s[1] + 26), (e[0], e[1] + 26), e


def _node_box(key, x: float, y: float, d: dict | None, color: str, ingress: bool,
              external: bool) -> str:
    app, name = key
    label = f"{app}/{name}" if external else name
    label = label if len(label) <= 22 else label[:21] + "…"
    if external:
        return (f'<g class="raylite-serve-node" data-app="{R.esc(app)}" '
                f'data-deployment="{R.esc(name)}" data-external="true">'
                f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6" fill="none" '
                f'stroke="{R.GREY}" stroke-dasharray="4 3"/><text x="{x + 8}" y="{y + 18}" '
                f'fill="currentColor">{R.esc(label)}</text><text x="{x + 8}" y="{y + 34}" '
                f'fill="currentColor" fill-opacity=".6">another application</text>'
                f"<title>{R.esc(app)}/{R.esc(name)}</title></g>")
    s = dep_sample(d) if d is not None else None
    status = (s or {}).get("status") or "?"
    line = "not deployed" if s is None else \
        f"{s['running']}/{s['target']} replicas · {s['ongoing']} ongoing" + \
        (f" · {s['queued']} queued" if s["queued"] else "")
    title = f"{name}: {status}" + (" (ingress)" if ingress else "") + \
        (f"\n{d.get('message')}" if d and d.get("message") else "")
    return (f'<g class="raylite-serve-node" data-app="{R.esc(app)}" '
            f'data-deployment="{R.esc(name)}" data-ingress="{str(ingress).lower()}">'
            f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6" fill="{color}" '
            f'fill-opacity=".14" stroke="{color}" stroke-width="{2.6 if ingress else 1.2}"/>'
            f'<circle cx="{x + NODE_W - 11}" cy="{y + 12}" r="4.5" '
            f'fill="{STATUS_COLORS.get(status, R.GREY)}"/>'
            f'<text x="{x + 8}" y="{y + 18}" fill="currentColor" font-weight="bold">'
            f'{R.esc(label)}</text><text x="{x + 8}" y="{y + 35}" fill="currentColor">'
            f"{R.esc(line)}</text><title>{R.esc(title)}</title></g>")


def topology_svg(app_name: str, app: dict, colors: dict | None = None) -> str:
    """One application's deployments as boxes (running/target replicas, ongoing and
    queued requests, a status dot), its handle calls as arrows, and the ingress drawn
    with a thick border behind an arrow for the HTTP route (or "handle" without one)."""
    topo = _topology(app_name, app)
    nodes, deps = topo.get("nodes") or {}, app.get("deployments") or {}
    colors = colors or assign_colors({}, [(app_name, n) for n in nodes])
    ingress = topo.get("ingress_deployment") or app.get("ingress_deployment")
    cols = layers(topo, app_name)
    top, left = 6, ENTRY_W if ingress in nodes else 8
    pos = {key: (left + c * (NODE_W + COL_GAP), top + r * (NODE_H + ROW_GAP))
           for c, col in enumerate(cols) for r, key in enumerate(col)}
    rows = max((len(c) for c in cols), default=1)
    width = left + len(cols) * (NODE_W + COL_GAP) - COL_GAP + 26
    height = top + rows * (NODE_H + ROW_GAP) - ROW_GAP + 30
    out = [R.svg_open(width, height, "raylite-serve-topology")]
    for name, node in nodes.items():
        src = (app_name, name)
        for key in _outbound(node, app_name):
            if key not in pos:
                continue
            s, c1, c2, e = _edge(pos[src], pos[key], key == src)
            color = colors.get(src, R.GREY)
            out.append(f'<g class="raylite-serve-edge" data-from="{R.esc(name)}" '
                       f'data-to="{R.esc(key[1])}"><path d="M{s[0]:.1f},{s[1]:.1f} '
                       f'C{c1[0]:.1f},{c1[1]:.1f} {c2[0]:.1f},{c2[1]:.1f} {e[0]:.1f},{e[1]:.1f}" '
                       f'fill="none" stroke="{color}" stroke-width="1.6"/>'
                       f'<path d="{_arrow_head(e, c2)}" fill="{color}"/><title>{R.esc(name)} '
                       f"calls {R.esc(key[1])} through a handle</title></g>")
    for key, (x, y) in pos.items():
        local = key[0] == app_name and key[1] in nodes
        out.append(_node_box(key, x, y, deps.get(key[1]) if local else None,
                             colors.get(key, R.GREY), local and key[1] == ingress, not local))
    if ingress in nodes:
        x, y = pos[(app_name, ingress)]
        route = app.get("route_prefix")
        route = route if route is None or len(route) <= 13 else route[:12] + "…"
        out.append(f'<g class="raylite-serve-entry"><text x="2" y="{y + NODE_H / 2 - 5:.1f}" '
                   f'fill="currentColor" fill-opacity=".8">{"handle" if route is None else "HTTP"}'
                   f'</text><text x="2" y="{y + NODE_H / 2 + 13:.1f}" fill="currentColor" '
                   f'fill-opacity=".8">{R.esc(route or "")}</text>'
                   f'<line x1="2" x2="{x - 3}" y1="{y + NODE_H / 2:.1f}" '
                   f'y2="{y + NODE_H / 2:.1f}" stroke="currentColor" stroke-width="1.4"/>'
                   f'<path d="{_arrow_head((x - 1, y + NODE_H / 2), (2, y + NODE_H / 2))}" '
                   f'fill="currentColor"/><title>requests enter at {R.esc(ingress)}'
                   f"</title></g>")
    out.append("</svg>")
    return "".join(out)


def app_header(app_name: str, app: dict) -> str:
    """One line over an application's graph: name, status, route, ingress, scaler."""
    status = app.get("status") or "?"
    parts = [f"<b>{R.esc(app_name)}</b> {R.badge(status, STATUS_COLORS.get(status, R.SLATE))}",
             "no HTTP route" if app.get("route_prefix") is None
             else f"route <code>{R.esc(app.get('route_prefix'))}</code>"]
    if app.get("ingress_deployment"):
        parts.append(f"ingress {R.esc(app['ingress_deployment'])}")
    if app.get("external_scaler_enabled"):
        parts.append("scaled by an external scaler")
    return f'<div style="{R.FONT};margin:6px 0 2px">' + " · ".join(parts) + "</div>"


def topology_html(status: dict | None, colors: dict | None = None) -> str:
    """Every application's graph, each under its header."""
    apps = _apps(status)
    colors = colors or assign_colors({}, sample(status, 0.0)["deps"])
    return "".join(f'<div class="raylite-serve-app" data-app="{R.esc(a)}">'
                   f"{app_header(a, app)}{topology_svg(a, app, colors)}</div>"
                   for a, app in apps.items())


# ------------------------------------------------------------------ charts
def chart_svg(samples: list[dict], key: tuple[str, str], color: str = R.PALETTE[0],
              now: float | None = None, window_s: float = 120.0, width: int = 430) -> str:
    """Replicas over the last ``window_s`` seconds (running: a solid line; running +
    starting: the shaded area; target: dashed) over the requests (ongoing: green area,
    queued: orange, stacked on top). A reading is drawn back to the one before it, so
    the latest shows. The most replicas running and the highest target in that time are
    the SVG's ``data-peak-running`` and ``data-peak-target``."""
    pts = [(s["t"], s["deps"][key]) for s in samples if key in s["deps"]]
    now = now if now is not None else (pts[-1][0] if pts else time.time())
    span = min(window_s, max(30.0, now - (pts[0][0] if pts else now)))
    t0 = now - span
    pts = [p for p in pts if p[0] >= t0 - 5]
    left, right, top, h1, h2 = 30, 10, 20, 62, 40
    top2 = top + h1 + 24
    pw = width - left - right
    rmax = max([1] + [max(d["target"], d["running"] + d["starting"]) for _, d in pts])
    qmax = max([1] + [d["ongoing"] + d["queued"] for _, d in pts])

    def x(t: float) -> float:
        return left + pw * (min(max(t, t0), now) - t0) / span

    def y1(v: float) -> float:
        return top + h1 - h1 * v / rmax

    def y2(v: float) -> float:
        return top2 + h2 - h2 * v / qmax

    last = pts[-1][1] if pts else dep_sample({})
    peak = max((d["running"] for _, d in pts), default=0)
    peak_target = max((d["target"] for _, d in pts), default=0)
    out = [R.svg_open(width, top2 + h2 + 20, "raylite-serve-chart",
                      f'data-peak-running="{peak}" data-peak-target="{peak_target}"'),
           R.legend([(f"running replicas ({last['running']})", color),
                     (f"target ({last['target']})", TARGET_COLOR)], left, 3),
           R.y_grid(rmax, y1, left, width - right, max_ticks=4),
           R.legend([(f"ongoing requests ({last['ongoing']})", ONGOING_COLOR),
                     (f"queued ({last['queued']})", QUEUED_COLOR)], left, top + h1 + 7),
           R.y_grid(qmax, y2, left, width - right, max_ticks=2, steps=2)]
    if pts:
        xs = [x(t) for t, _ in pts]
        out += [
            R.step_area([(px, y1(d["running"] + d["starting"])) for px, (_, d) in
                         zip(xs, pts, strict=True)], y1(0), color, "running + starting",
                        "raylite-starting", pre=True),
            R.step_line([(px, y1(d["running"])) for px, (_, d) in zip(xs, pts, strict=True)],
                        color, "running replicas", cls="raylite-running", pre=True),
            R.step_line([(px, y1(d["target"])) for px, (_, d) in zip(xs, pts, strict=True)],
                        TARGET_COLOR, "target replicas", dashed=True, cls="raylite-target",
                        pre=True),
            R.step_area([(px, y2(d["ongoing"] + d["queued"])) for px, (_, d) in
                         zip(xs, pts, strict=True)], y2(0), QUEUED_COLOR, "queued requests",
                        "raylite-queued", pre=True),
            R.step_area([(px, y2(d["ongoing"])) for px, (_, d) in zip(xs, pts, strict=True)],
                        y2(0), ONGOING_COLOR, "ongoing requests", "raylite-ongoing", pre=True)]
    out += [R.time_axis(x, now, span, left, width - right, top2 + h2), "</svg>"]
    return "".join(out)


def deployment_card(key: tuple[str, str], d: dict, samples: list[dict], color: str,
                    now: float | None = None, window_s: float = 120.0) -> str:
    """One deployment: its name and status, its numbers now, and its chart."""
    app, name = key
    s = dep_sample(d)
    status = s["status"] or "?"
    extra = "".join(f", {s[k]} {k}" for k in ("starting", "stopping") if s[k])
    msg = d.get("message") if isinstance(d, dict) else None
    return (f'<div class="raylite-serve-deployment" data-app="{R.esc(app)}" '
            f'data-deployment="{R.esc(name)}" style="border:{R.BORDER};border-radius:6px;'
            f'padding:6px 8px;margin:0 8px 8px 0;{R.FONT};color:inherit;max-width:450px">'
            f'<div style="display:flex;align-items:center;gap:6px"><span style="width:10px;'
            f'height:10px;border-radius:2px;background:{color}"></span><b>{R.esc(app)} / '
            f'{R.esc(name)}</b>{R.badge(status, STATUS_COLORS.get(status, R.SLATE))}</div>'
            f'<div class="raylite-serve-numbers"><b>{s["running"]}</b>/{s["target"]} replicas '
            f'running{extra} · {s["ongoing"]} ongoing · {s["queued"]} queued</div>'
            + (f'<div style="opacity:.7">{R.esc(msg)}</div>' if msg else "")
            + chart_svg(samples, key, color, now, window_s) + "</div>")


def deployment_cards(status: dict | None, samples: list[dict], colors: dict,
                     now: float | None = None, window_s: float = 120.0) -> dict:
    """``{(app, deployment): card html}``, applications in order, each app's
    deployments in the order of its graph (the ingress first)."""
    cards = {}
    for a, app in _apps(status).items():
        deps = app.get("deployments") or {}
        order = [k[1] for col in layers(_topology(a, app), a) for k in col if k[0] == a]
        for n in [n for n in order if n in deps] + [n for n in deps if n not in order]:
            cards[(a, n)] = deployment_card((a, n), deps[n], samples,
                                            colors.get((a, n), R.PALETTE[0]), now, window_s)
    return cards


def serve_header(status: dict | None, error: str | None = None) -> str:
    """One line: applications and their states, deployments, replicas, load, proxy."""
    if status is None:
        parts = ["<b>serve</b>", "not running (<code>serve.run(app)</code> starts it)"]
    else:
        apps = _apps(status)
        deps = [dep_sample(d) for a in apps.values() for d in (a.get("deployments") or {})
                .values()]
        states = sorted({a.get("status") or "?" for a in apps.values()})
        parts = ["<b>serve</b>", R.plural(len(apps), "application") +
                 (f" ({', '.join(states)})" if states else ""),
                 R.plural(len(deps), "deployment"),
                 f"{sum(d['running'] for d in deps)}/{sum(d['target'] for d in deps)} "
                 "replicas running",
                 f"{sum(d['ongoing'] for d in deps)} ongoing, "
                 f"{sum(d['queued'] for d in deps)} queued requests"]
        proxies = status.get("proxies") or {}
        if proxies:
            parts.append("HTTP proxy " + ", ".join(
                str(p.get("status", "?")) if isinstance(p, dict) else str(p)
                for p in proxies.values()))
    if error:
        parts.append(f'<span style="color:{R.RED}">cannot read the status: {R.esc(error)} '
                     f"(showing the last one)</span>")
    return f'<div style="{R.FONT};margin:2px 0 4px">' + " · ".join(parts) + "</div>"


def serve_html(status: dict | None, samples: list[dict], colors: dict | None = None,
               now: float | None = None, window_s: float = 120.0,
               error: str | None = None) -> str:
    """The whole ServeView as one static HTML string."""
    colors = assign_colors(colors or {}, sample(status, 0.0)["deps"])
    cards = deployment_cards(status, samples, colors, now, window_s)
    return (f'<div class="raylite-serve">{serve_header(status, error)}'
            f"{topology_html(status, colors)}{R.flex(cards.values())}</div>")


def serve_text(status: dict | None) -> str:
    """A plain-text summary: one line per deployment."""
    if status is None:
        return "  serve is not running"
    lines = []
    for a, app in _apps(status).items():
        lines.append(f"  {a} ({app.get('status', '?')}, route {app.get('route_prefix')})")
        for n, d in (app.get("deployments") or {}).items():
            s = dep_sample(d)
            lines.append(f"    {n}: {s['status']}, {s['running']}/{s['target']} replicas, "
                         f"{s['ongoing']} ongoing, {s['queued']} queued")
    return "\n".join(lines) or "  no applications"
