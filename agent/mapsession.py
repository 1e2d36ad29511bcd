"""Following one controller's network maps: which map to ask for next, and turning each answer (a full
map or a delta) into the full map it stands for. Pure (tailscale's `mapSession`).

Rules:
- The base of the next delta is the last map the controller SENT (deltas applied), applied to the
  host or not: a map the data plane refused is retried by the core, never fetched again.
- After a start, a failure or a dropped delta the session asks for the whole map at once (since=0,
  no wait); otherwise it long-polls from the map it holds.
- A delta that does not apply to the map held is dropped (`DeltaDropped`) and the full map asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

from wire.delta import DeltaMismatch, apply_delta
from wire.models import NetMap, NetMapDelta


@dataclass(frozen=True)
class DeltaDropped:
    """A delta against `base_serial` came while the session held `held_serial` (None: no map)."""

    base_serial: int
    held_serial: int | None


class MapSession:
    def __init__(self, poll_timeout_s: float) -> None:
        self.poll_timeout_s = poll_timeout_s
        self.held: NetMap | None = None  # the last map the controller sent, deltas applied
        self.fresh = True  # ask for the whole map at once

    def request(self) -> tuple[int, float]:
        """(since, timeout_s) of the next poll."""
        if self.fresh or self.held is None:
            return 0, 0.0
        return self.held.serial, self.poll_timeout_s

    def lost(self) -> None:
        """A poll failed: the next one asks for the whole map."""
        self.fresh = True

    def receive(self, answer: NetMap | NetMapDelta | None) -> NetMap | DeltaDropped | None:
        """The full map an answer stands for; None when nothing changed (the wait ran out)."""
        self.fresh = False
        if answer is None:
            return None
        if isinstance(answer, NetMapDelta):
            held = self.held
            try:
                netmap = apply_delta(held, answer) if held is not None else None
            except DeltaMismatch:
                netmap = None
            if netmap is None:
                self.fresh = True
                return DeltaDropped(answer.base_serial, held.serial if held is not None else None)
        else:
            netmap = answer
        self.held = netmap
        return netmap
