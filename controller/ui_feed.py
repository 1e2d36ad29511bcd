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

    def current(self, fresh: bool = False) -> tuple[int, str]:
        """(serial, the view as JSON text): the one kept, unless the plane moved since it was made and
        it is due (`fresh`: whenever the plane moved, for a single request)."""
        marks = (self.plane.changes, self.plane.polls)
        kept = self._marks
        if kept != marks and (fresh or kept is None or self._due(kept[0] != marks[0])):
            self._marks = marks  # read before computing: a change meanwhile makes another
            self._text = json.dumps(self.compute(), separators=(",", ":"))
            self._at = self.clock()
            self.computed += 1
        return self.computed, self._text

    def _due(self, changed: bool) -> bool:
        return self.clock() - self._at >= (MIN_GAP_S if changed else SEEN_EVERY_S)
