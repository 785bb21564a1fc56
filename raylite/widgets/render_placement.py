"""Pure rendering of placement groups: bundles drawn on the nodes that hold them.

Each group gets a colour (by creation order, so it stays put while the view lives); a
node card shows a segmented bar per reserved resource (one segment per bundle, in its
group's colour) and the bundles as chips; bundles not placed yet are listed apart, with
their label selectors, dashed.
"""

from __future__ import annotations

from raylite.widgets import render as R

STATE_COLORS = {"CREATED": R.GREEN, "PENDING": R.ORANGE, "RESCHEDULING": R.ORANGE,
                "REMOVED": R.SLATE}


def group_colors(pgs) -> dict[str, str]:
    """``{placement_group_id: colour}``: one palette colour per group, by creation order
    (removed groups keep their slot, so colours do not shift when one goes)."""
    ordered = sorted(pgs, key=lambda p: (p.get("created_at") or 0, p["placement_group_id"]))
    return {p["placement_group_id"]: R.CATEGORY[i % len(R.CATEGORY)]
            for i, p in enumerate(ordered)}


def group_name(pg: dict) -> str:
    """A group's name, or the start of its id when it has none."""
    return pg.get("name") or R.short(pg["placement_group_id"])


def selector_text(sel: dict | None) -> str:
    """{'zone': 'in(a,b)'} -> 'zone: in(a,b)'."""
    return ", ".join(f"{k}: {v}" for k, v in (sel or {}).items())


def visible_groups(pgs, show_removed: bool = False) -> list[dict]:
    """The groups to show: all but removed ones, unless asked."""
    return [p for p in pgs or () if show_removed or p.get("state") != "REMOVED"]


def bundle_chip(pg: dict, b: dict, color: str, inline: bool = False) -> str:
    """A bundle: its group and index, resources (and what tasks in it use), selector."""
    pending = b.get("node_id") is None
    res = b.get("resources") or {}
    text = f"<b>{R.esc(group_name(pg))}</b> #{b.get('bundle_index', '?')} · " + \
        R.esc(R.fmt_resources(res))
    avail = b.get("available") or {}
    if not pending and res:
        in_use = {k: v - avail.get(k, 0.0) for k, v in res.items()
                  if v - avail.get(k, 0.0) > 1e-9}
        if in_use:
            text += f" ({R.esc(R.fmt_resources(in_use))} in use)"
    sel = selector_text(b.get("label_selector"))
    if sel:
        text += f' · <span style="opacity:.8">{R.esc(sel)}</span>'
    style = "dashed" if pending else "solid"
    return (f'<div class="raylite-bundle" data-pg="{R.esc(pg["placement_group_id"])}" '
            f'data-bundle="{b.get("bundle_index")}" style="border-left:4px {style} {color};'
            f'border-top:1px {style} {color};border-right:1px {style} {color};'
            f'border-bottom:1px {style} {color};border-radius:3px;padding:1px 5px;margin:2px 0;'
            f'background:{color}22{";display:inline-block;margin-right:6px" if inline else ""}">'
            f'{text}</div>')


def segmented_bar(resource: str, total: float, segments: list[tuple[float, str, str]]) -> str:
    """A bar of ``total`` with one coloured segment per (amount, colour, title)."""
    parts, used = [], 0.0
    for amount, color, title in segments:
        w = 100.0 * amount / total if total else 0.0
        used += amount
        parts.append(f'<div title="{R.esc(title)}" style="width:{w:.1f}%;height:100%;'
                     f'background:{color};box-shadow:inset -1px 0 rgba(0,0,0,.25)"></div>')
    return (f'<div style="display:flex;align-items:center;gap:6px;margin:2px 0">'
            f'<span style="width:58px">{R.esc(resource)}</span>'
            f'<div style="flex:1;height:11px;display:flex;{R.TRACK}">{"".join(parts)}</div>'
            f'<span style="flex:none;width:96px;text-align:right">'
            f'{R.esc(R.fmt_amount(resource, used))}/{R.esc(R.fmt_amount(resource, total))} reserved'
            f'</span></div>')


def placement_node_card(node: dict, held: list[tuple[dict, dict]], colors: dict) -> str:
    """A node with the bundles it holds: ``held`` is a list of (group, bundle)."""
    nid = node.get("node_id", "?")
    alive = node.get("alive", True)
    rows = [f'<div style="display:flex;justify-content:space-between;gap:6px;'
            f'margin-bottom:3px"><b>{R.esc(nid)}</b>'
            f'{R.badge("alive", R.GREEN) if alive else R.badge("dead", R.RED)}</div>']
    labels = R.user_labels(node.get("labels") or {})
    if labels:
        rows.append("<div>" + "".join(R.chip(f"{R.esc(k)}={R.esc(v)}")
                                      for k, v in labels.items()) + "</div>")
    total = node.get("resources") or {}
    reserved = sorted({k for _, b in held for k in (b.get("resources") or {})},
                      key=lambda k: (k not in ("CPU", "GPU"), k))
    for k in reserved:
        segs = [(b["resources"][k], colors.get(pg["placement_group_id"], R.GREY),
                 f"{group_name(pg)} #{b.get('bundle_index')}")
                for pg, b in held if k in (b.get("resources") or {})]
        rows.append(segmented_bar(k, total.get(k, sum(s[0] for s in segs)), segs))
    if held:
        rows += [bundle_chip(pg, b, colors.get(pg["placement_group_id"], R.GREY))
                 for pg, b in held]
    else:
        rows.append('<div style="opacity:.6">no bundles</div>')
    style = R.CARD + ("" if alive else ";opacity:.55;border-style:dashed")
    return f'<div class="raylite-node" data-node-id="{R.esc(nid)}" style="{style}">' + \
        "".join(rows) + "</div>"


def placement_cards(state: dict, show_removed: bool = False) -> dict[str, str]:
    """``{node_id: card}`` for the live nodes, and dead ones still named by a bundle."""
    pgs = visible_groups(state.get("placement_groups"), show_removed)
    colors = group_colors(state.get("placement_groups") or [])
    held: dict[str, list] = {}
    for pg in sorted(pgs, key=lambda p: (p.get("created_at") or 0, p["placement_group_id"])):
        if pg.get("state") == "REMOVED":
            continue
        for b in pg.get("bundles") or ():
            if b.get("node_id") is not None:
                held.setdefault(b["node_id"], []).append((pg, b))
    return {n["node_id"]: placement_node_card(n, held.get(n["node_id"], []), colors)
            for n in R.ordered_nodes(state.get("nodes"))
            if n.get("alive", True) or n["node_id"] in held}


def pending_bundles(state: dict) -> str:
    """The bundles no node holds yet, by group, dashed in the group's colour."""
    colors = group_colors(state.get("placement_groups") or [])
    chips = []
    for pg in visible_groups(state.get("placement_groups")):
        if pg.get("state") == "REMOVED":
            continue
        waiting = [b for b in pg.get("bundles") or () if b.get("node_id") is None]
        chips += [bundle_chip(pg, b, colors[pg["placement_group_id"]], inline=True)
                  for b in waiting]
    if not chips:
        return ""
    return (f'<div class="raylite-pending" style="{R.FONT};margin:4px 0"><b>pending bundles '
            f'({len(chips)})</b><br>{"".join(chips)}</div>')


def groups_table(state: dict, show_removed: bool = False) -> str:
    """One row per group: colour, name, strategy, state, bundles placed, selectors."""
    all_pgs = state.get("placement_groups") or []
    colors = group_colors(all_pgs)
    pgs = visible_groups(all_pgs, show_removed)
    if not pgs:
        return f'<div style="{R.FONT};opacity:.65">no placement groups</div>'
    td = f'style="padding:2px 8px;border-bottom:{R.BORDER};text-align:left"'
    head = "".join(f"<th {td}>{h}</th>" for h in
                   ("", "group", "strategy", "state", "bundles placed", "label selectors"))
    rows = []
    for pg in pgs:
        color = colors[pg["placement_group_id"]]
        bundles = pg.get("bundles") or []
        placed = sum(b.get("node_id") is not None for b in bundles)
        state_txt = pg.get("state", "?")
        sels = "; ".join(f"#{b.get('bundle_index')} {selector_text(b.get('label_selector'))}"
                         for b in bundles if b.get("label_selector"))
        note = " · infeasible" if pg.get("infeasible") else ""
        rows.append(
            f'<tr data-pg="{R.esc(pg["placement_group_id"])}"><td {td}><span style="display:'
            f'inline-block;width:12px;height:12px;border-radius:2px;background:{color}">'
            f"</span></td><td {td}><b>{R.esc(group_name(pg))}</b></td>"
            f"<td {td}>{R.esc(pg.get('strategy', '?'))}</td>"
            f"<td {td}>{R.badge(state_txt, STATE_COLORS.get(state_txt, R.SLATE))}{R.esc(note)}</td>"
            f"<td {td}>{placed}/{len(bundles)}</td><td {td}>{R.esc(sels) or '-'}</td></tr>")
    return (f'<table class="raylite-groups" style="{R.FONT};border-collapse:collapse;'
            f'margin:4px 0">'
            f"<tr>{head}</tr>{''.join(rows)}</table>")


def placement_header(state: dict) -> str:
    """One line: how many groups, by state."""
    pgs = visible_groups(state.get("placement_groups"))
    by_state: dict[str, int] = {}
    for p in pgs:
        by_state[p.get("state", "?")] = by_state.get(p.get("state", "?"), 0) + 1
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(by_state.items()))
    return (f'<div style="{R.FONT};margin:2px 0 6px"><b>placement groups</b> · {len(pgs)}'
            + (f" ({counts})" if counts else "") + "</div>")


def placement_html(state: dict, show_removed: bool = False) -> str:
    """The whole PlacementView as one static HTML string."""
    cards = placement_cards(state, show_removed)
    return (f'<div class="raylite-placement">{placement_header(state)}'
            f'{groups_table(state, show_removed)}{pending_bundles(state)}'
            f'{R.flex(cards.values())}</div>')
