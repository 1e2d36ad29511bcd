"""The replay window for relayed (signed) messages, per origin.

A signed message can be captured and sent again by anyone who relays it, so for each origin we accept a
message only when
- its timestamp is within `window` seconds of `now` (either side: clocks differ a little), and
- its timestamp is above the origin's floor, and
- its id was not seen from that origin within the window.

Memory is bounded whatever arrives: at most `per_origin` ids per origin (origins are directory nodes
only). When an origin sends more than that within the window, the oldest id is forgotten and the floor
rises to its timestamp, so anything that old is refused from then on: forgetting never reopens a replay.
"""

from __future__ import annotations

import heapq
from enum import Enum


class Freshness(Enum):
    FRESH = "fresh"
    STALE = "stale"  # timestamp outside the window
    REPLAYED = "replayed"  # id seen before, or at/below the floor


class _OriginWindow:
    __slots__ = ("floor", "heap", "seen")

    def __init__(self) -> None:
        self.seen: dict[bytes, float] = {}
        self.heap: list[tuple[float, bytes]] = []
        self.floor = float("-inf")


class ReplayWindow:
    __slots__ = ("_origins", "per_origin", "window")

    def __init__(self, window: float, per_origin: int) -> None:
        if window <= 0 or per_origin < 1:
            raise ValueError("replay window and per-origin capacity must be positive")
        self.window = window
        self.per_origin = per_origin
        self._origins: dict[int, _OriginWindow] = {}

    def check(self, origin: int, message_id: bytes, timestamp: float, now: float) -> Freshness:
        if not now - self.window <= timestamp <= now + self.window:
            return Freshness.STALE
        state = self._origins.get(origin)
        if state is None:
            return Freshness.FRESH
        if timestamp <= state.floor or message_id in state.seen:
            return Freshness.REPLAYED
        return Freshness.FRESH

    def record(self, origin: int, message_id: bytes, timestamp: float, now: float) -> None:
        """Remember an accepted message. Call only after `check` said FRESH and the signature verified."""
        state = self._origins.get(origin)
        if state is None:
            state = self._origins[origin] = _OriginWindow()
        horizon = now - self.window
        heap = state.heap
        # Ids older than the window need no memory: the timestamp check refuses them.
        while heap and heap[0][0] < horizon:
            _, old = heapq.heappop(heap)
            state.seen.pop(old, None)
        if len(heap) >= self.per_origin:
            ts, old = heapq.heappop(heap)
            state.seen.pop(old, None)
            state.floor = max(state.floor, ts)
        state.seen[message_id] = timestamp
        heapq.heappush(heap, (timestamp, message_id))

    def forget_origin(self, origin: int) -> None:
        self._origins.pop(origin, None)

    def size(self) -> int:
        return sum(len(s.seen) for s in self._origins.values())
