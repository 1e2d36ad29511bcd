"""The topology page's view as JSON text, shared by every browser watching (the event streams and GET
/ui/api/view of one app): computed again only when the plane moved, never per browser or per tick.

Rules:
- The view is computed again when `plane.changes` moved (the mesh, its links, a node or its rotation
  may have changed), at most once per MIN_GAP_S: a burst of changes (reports from many nodes) costs
  one computation, and a change is shown within MIN_GAP_S plus a stream's poll.
- Polls move only a node's `last_seen` (the page counts its age on by itself): they alone make a new
  view at most every SEEN_EVERY_S, so the page's "last poll" is at most that much behind, far inside
  the page's online window.
- GET /ui/api/view (one answer, not a stream) asks for a `fresh` view: computed again whenever the
  plane moved.
- `serial` numbers the texts computed: a stream that sent serial s sends the next one only when its
  text differs (a change may leave everything shown as it was).
- Each view after the first also has its delta from the one before (`delta_text`): the nodes and
  links that are new or changed, by id and by (a, b), those gone, and the relayed routes whole (at most
  ui_view.MAX_RELAYED). A stream that sent serial s - 1 sends the delta of s; any other, the view.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controller.control import ControlPlane

MIN_GAP_S = 0.5
SEEN_EVERY_S = 5.0


class ViewFeed:
    def __init__(
        self,
        plane: ControlPlane,
        compute: Callable[[], dict[str, Any]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plane = plane
        self.compute = compute
        self.clock = clock
        self.computed = 0
        """How many views were computed (for tests and benchmarks)."""
        self._marks: tuple[int, int] | None = None  # (plane.changes, plane.polls) the text was made at
        self._at = 0.0
        self._text = ""
        self._view: dict[str, Any] | None = None
        self._delta: str | None = None

    def current(self, fresh: bool = False) -> tuple[int, str]:
        """(serial, the view as JSON text): the one kept, unless the plane moved since it was made and
        it is due (`fresh`: whenever the plane moved, for a single request)."""
        marks = (self.plane.changes, self.plane.polls)
        kept = self._marks
        if kept != marks and (fresh or kept is None or self._due(kept[0] != marks[0])):
            self._marks = marks  # read before computing: a change meanwhile makes another
            view = self.compute()
            self._text = _json(view)
            self._delta = None if self._view is None else _json(delta(self._view, view))
            self._view = view
            self._at = self.clock()
            self.computed += 1
        return self.computed, self._text

    def delta_text(self, serial: int) -> str | None:
        """The delta that turns view `serial` - 1 into view `serial`, while `serial` is the current one."""
        return self._delta if serial == self.computed else None

    def _due(self, changed: bool) -> bool:
        return self.clock() - self._at >= (MIN_GAP_S if changed else SEEN_EVERY_S)


def delta(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What turns view `old` into view `new` (see the module's rules)."""
    old_nodes = {n["id"]: n for n in old["nodes"]}
    new_nodes = {n["id"]: n for n in new["nodes"]}
    old_links = {(lk["a"], lk["b"]): lk for lk in old["links"]}
    new_links = {(lk["a"], lk["b"]): lk for lk in new["links"]}
    return {
        "version": new["version"],
        "nodes": [n for i, n in new_nodes.items() if old_nodes.get(i) != n],
        "nodes_gone": [i for i in old_nodes if i not in new_nodes],
        "links": [lk for k, lk in new_links.items() if old_links.get(k) != lk],
        "links_gone": [list(k) for k in old_links if k not in new_links],
        "relayed": new["relayed"],
        "relayed_total": new["relayed_total"],
    }


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))
