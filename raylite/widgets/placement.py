"""PlacementView: placement groups and their bundles on the nodes that hold them."""

from __future__ import annotations

from raylite.widgets import render_placement as RP
from raylite.widgets.base import LiveView, card_box, set_cards, set_value


class PlacementView(LiveView):
    """Placement groups, live: a table of groups (a colour each, strategy, state, bundles
    placed, label selectors), the bundles still pending (dashed, with their selectors),
    and a card per node showing the bundles it holds as coloured segments of its
    resources and as chips (with what the tasks inside a bundle use).

    ``show_removed=True`` keeps removed groups in the table. Ray's dashboard lists
    placement groups as a table only; this view draws them on the nodes.
    """

    sections = ("nodes", "placement_groups")
    topics = ("placement_group", "node")

    def __init__(self, live: bool = True, show_removed: bool = False):
        self.show_removed = show_removed
        self._cards: dict = {}
        super().__init__(live)

    def _build(self, w):
        self._header, self._groups, self._pending = w.HTML(), w.HTML(), w.HTML()
        self._box = card_box(w)
        return w.VBox([self._header, self._groups, self._pending, self._box, self._status_w])

    def _update(self, state: dict) -> None:
        set_value(self._header, RP.placement_header(state))
        set_value(self._groups, RP.groups_table(state, self.show_removed))
        set_value(self._pending, RP.pending_bundles(state))
        set_cards(self._box, self._cards, RP.placement_cards(state, self.show_removed))

    def _render(self, state: dict) -> str:
        return RP.placement_html(state, self.show_removed)

    def _text(self, state: dict) -> str:
        lines = []
        for pg in RP.visible_groups(state.get("placement_groups"), self.show_removed):
            where = ", ".join(f"#{b.get('bundle_index')}->{b.get('node_id') or 'pending'}"
                              for b in pg.get("bundles") or ())
            lines.append(f"  {RP.group_name(pg)} {pg.get('strategy')} {pg.get('state')}: "
                         f"{where}")
        return "\n".join(lines) or "  no placement groups"
