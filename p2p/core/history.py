"""The history: a bounded record of recent messages (sent and received) with O(1) lookup by id.

De-duplication asks it "seen this id?"; programs can look a message up by id. What is kept when it is
full is a pluggable retention strategy:
- `LeastRecentlyUsed`: evict the message looked up (or added) longest ago.
- `MaxAge(seconds)`: messages expire after a fixed age; when full, the oldest goes first.
- `ByPriority(base_age)`: when full, the lowest priority goes first (oldest within a priority), so
  high-priority messages outlive low ones; with `base_age`, a message of priority p also expires after
  base_age * p seconds.

Rules:
- Memory is bounded whatever arrives: at most `max_entries` messages and `max_bytes` of payload.
- Every operation is O(1) (ByPriority scans a fixed 10 buckets). Time is an input: `now`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from p2p.core.message import PRIORITY_MAX, PRIORITY_MIN, Message

ENTRY_OVERHEAD = 200  # bytes charged per entry besides its payload: the objects around it


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    message: Message
    size: int
    recorded_at: float


class Retention(Protocol):
    """Which entry goes when the history is full, and which have expired. Entries are keyed by id."""

    def added(self, key: bytes, entry: HistoryEntry) -> None: ...
    def accessed(self, key: bytes, entry: HistoryEntry) -> None: ...
    def removed(self, key: bytes, entry: HistoryEntry) -> None: ...
    def victim(self) -> bytes | None: ...
    def expired(self, now: float) -> list[bytes]: ...


class LeastRecentlyUsed:
    __slots__ = ("_order",)

    def __init__(self) -> None:
        self._order: OrderedDict[bytes, None] = OrderedDict()

    def added(self, key: bytes, entry: HistoryEntry) -> None:
        self._order[key] = None

    def accessed(self, key: bytes, entry: HistoryEntry) -> None:
        self._order.move_to_end(key)

    def removed(self, key: bytes, entry: HistoryEntry) -> None:
        self._order.pop(key, None)

    def victim(self) -> bytes | None:
        return next(iter(self._order), None)

    def expired(self, now: float) -> list[bytes]:
        return []


class MaxAge:
    __slots__ = ("_order", "seconds")

    def __init__(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError("max age must be positive")
        self.seconds = seconds
        self._order: OrderedDict[bytes, float] = OrderedDict()  # insertion order = time order

    def added(self, key: bytes, entry: HistoryEntry) -> None:
        self._order[key] = entry.recorded_at

    def accessed(self, key: bytes, entry: HistoryEntry) -> None:
        pass

    def removed(self, key: bytes, entry: HistoryEntry) -> None:
        self._order.pop(key, None)

    def victim(self) -> bytes | None:
        return next(iter(self._order), None)

    def expired(self, now: float) -> list[bytes]:
        horizon = now - self.seconds
        out: list[bytes] = []
        for key, at in self._order.items():
            if at > horizon:
                break
            out.append(key)
        return out


class ByPriority:
    __slots__ = ("_buckets", "base_age")

    def __init__(self, base_age: float | None = None) -> None:
        if base_age is not None and base_age <= 0:
            raise ValueError("base age must be positive")
        self.base_age = base_age
        self._buckets: list[OrderedDict[bytes, float]] = [OrderedDict() for _ in range(PRIORITY_MAX + 1)]

    def added(self, key: bytes, entry: HistoryEntry) -> None:
        self._buckets[entry.message.priority][key] = entry.recorded_at

    def accessed(self, key: bytes, entry: HistoryEntry) -> None:
        pass

    def removed(self, key: bytes, entry: HistoryEntry) -> None:
        self._buckets[entry.message.priority].pop(key, None)

    def victim(self) -> bytes | None:
        for priority in range(PRIORITY_MIN, PRIORITY_MAX + 1):
            bucket = self._buckets[priority]
            if bucket:
                return next(iter(bucket))
        return None

    def expired(self, now: float) -> list[bytes]:
        if self.base_age is None:
            return []
        out: list[bytes] = []
        for priority in range(PRIORITY_MIN, PRIORITY_MAX + 1):
            horizon = now - self.base_age * priority
            for key, at in self._buckets[priority].items():
                if at > horizon:
                    break
                out.append(key)
        return out


class History:
    __slots__ = ("_bytes", "_entries", "max_bytes", "max_entries", "retention")

    def __init__(
        self,
        retention: Retention | None = None,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("history bounds must be positive")
        self.retention: Retention = retention if retention is not None else LeastRecentlyUsed()
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: dict[bytes, HistoryEntry] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._entries

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def add(self, message: Message, payload_size: int, now: float) -> bool:
        """Record `message`. False (and nothing changes) when its id is already recorded or it is
        larger than the whole history may hold."""
        if message.id in self._entries:
            return False
        size = payload_size + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return False
        self.prune(now)
        while self._entries and (
            len(self._entries) >= self.max_entries or self._bytes + size > self.max_bytes
        ):
            victim = self.retention.victim()
            if victim is None:
                raise AssertionError("retention strategy lost track of entries")
            self._remove(victim)
        entry = HistoryEntry(message, size, now)
        self._entries[message.id] = entry
        self._bytes += size
        self.retention.added(message.id, entry)
        return True

    def get(self, message_id: bytes, now: float | None = None) -> Message | None:
        """The message with this id, or None. With `now`, expired messages are dropped first."""
        if now is not None:
            self.prune(now)
        entry = self._entries.get(message_id)
        if entry is None:
            return None
        self.retention.accessed(message_id, entry)
        return entry.message

    def prune(self, now: float) -> int:
        """Drop expired messages; returns how many."""
        expired = self.retention.expired(now)
        for key in expired:
            self._remove(key)
        return len(expired)

    def _remove(self, key: bytes) -> None:
        entry = self._entries.pop(key)
        self._bytes -= entry.size
        self.retention.removed(key, entry)
