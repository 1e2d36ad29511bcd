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
from collections.abc import Container, Iterable
from itertools import repeat
from operator import itemgetter
from typing import Any, NamedTuple, Protocol

from p2p.core.message import PRIORITY_MAX, PRIORITY_MIN, Message

ENTRY_OVERHEAD = 200  # bytes charged per entry besides its payload: the objects around it


class HistoryEntry(NamedTuple):
    """What a retention strategy is shown of an entry. Immutable."""

    message: Message
    size: int
    recorded_at: float


class Retention(Protocol):
    """Which entry goes when the history is full, and which have expired. Entries are keyed by id; the
    strategy keeps its own order and forgets a key when it hands it out (evict, expired) or is told
    (removed)."""

    def added(self, key: bytes, entry: HistoryEntry) -> None: ...
    def accessed(self, key: bytes, entry: HistoryEntry) -> None: ...
    def removed(self, key: bytes, entry: HistoryEntry) -> None: ...
    def evict(self) -> bytes | None:
        """Forget and return the key to drop when the history is full (None when empty)."""
        ...

    def expired(self, now: float) -> list[bytes]:
        """Forget and return the keys past their lifetime at `now`."""
        ...

    def next_expiry(self) -> float:
        """The earliest time a kept entry expires (infinity when none will); lets `add` skip pruning."""
        ...

    def expires_at(self, entry: HistoryEntry) -> float:
        """When `entry` expires (infinity: never)."""
        ...


_NEVER = float("inf")
_new_tuple = tuple.__new__
_LRU_SIZE = len(Message._fields)  # index of the size in an LRU entry (*message, size, recorded_at)
_id_of = itemgetter(4)  # Message.id, and the id in an LRU entry
_entry_of = itemgetter(1)  # of an OrderedDict's (key, value) pair
_size_of = itemgetter(_LRU_SIZE)


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

    def evict(self) -> bytes | None:
        return self._order.popitem(last=False)[0] if self._order else None

    def expired(self, now: float) -> list[bytes]:
        return []

    def next_expiry(self) -> float:
        return _NEVER

    def expires_at(self, entry: HistoryEntry) -> float:
        return _NEVER


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

    def evict(self) -> bytes | None:
        return self._order.popitem(last=False)[0] if self._order else None

    def expired(self, now: float) -> list[bytes]:
        # Same expression as expires_at: `now - seconds` rounds differently and would keep an entry
        # whose expiry time has passed.
        out: list[bytes] = []
        order = self._order
        while order:
            key, at = next(iter(order.items()))
            if at + self.seconds > now:
                break
            order.popitem(last=False)
            out.append(key)
        return out

    def next_expiry(self) -> float:
        for at in self._order.values():
            return at + self.seconds
        return _NEVER

    def expires_at(self, entry: HistoryEntry) -> float:
        return entry.recorded_at + self.seconds


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

    def evict(self) -> bytes | None:
        for priority in range(PRIORITY_MIN, PRIORITY_MAX + 1):
            bucket = self._buckets[priority]
            if bucket:
                return bucket.popitem(last=False)[0]
        return None

    def expired(self, now: float) -> list[bytes]:
        if self.base_age is None:
            return []
        out: list[bytes] = []
        for priority in range(PRIORITY_MIN, PRIORITY_MAX + 1):
            lifetime = self.base_age * priority
            bucket = self._buckets[priority]
            while bucket:
                key, at = next(iter(bucket.items()))
                if at + lifetime > now:
                    break
                bucket.popitem(last=False)
                out.append(key)
        return out

    def next_expiry(self) -> float:
        if self.base_age is None:
            return _NEVER
        soonest = _NEVER
        for priority in range(PRIORITY_MIN, PRIORITY_MAX + 1):
            for at in self._buckets[priority].values():
                soonest = min(soonest, at + self.base_age * priority)
                break
        return soonest

    def expires_at(self, entry: HistoryEntry) -> float:
        if self.base_age is None:
            return _NEVER
        return entry.recorded_at + self.base_age * entry.message.priority


class History:
    __slots__ = (
        "_bytes",
        "_entries",
        "_lru",
        "_next_expiry",
        "deferred",
        "ids",
        "max_bytes",
        "max_entries",
        "retention",
    )

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
        self._bytes = 0
        self._next_expiry = _NEVER
        # The default strategy kept by the history itself, its entries in an OrderedDict in use order:
        # the same evictions with one dict per message instead of two, and no calls through the
        # protocol (the node adds every message it sends and receives).
        # Its entries are plain tuples (*message, size, recorded_at), not Message/HistoryEntry: the garbage
        # collector untracks a plain tuple of plain values, never a NamedTuple, and 10,000 tracked
        # entries passing through every generation cost the node a third of its CPU (measured).
        self._lru = type(self.retention) is LeastRecentlyUsed
        self._entries: OrderedDict[bytes, Any] = OrderedDict()
        # the kept ids, to test `id in history.ids` without a Python-level __contains__ (per message);
        # `flush()` first when something may be deferred
        self.ids: Container[bytes] = self._entries
        # Messages recorded by appending here, for a caller that records one per message and cannot
        # afford a call (the node's send): plain tuples (type, data, timestamp, sender, id, priority,
        # payload_size + ENTRY_OVERHEAD, recorded_at). Taken in, in order and as `add` would, by
        # `flush`, which every method here runs first.
        self.deferred: list[tuple[Any, ...]] = []

    def __len__(self) -> int:
        if self.deferred:
            self.flush()
        return len(self._entries)

    def __contains__(self, message_id: object) -> bool:
        if self.deferred:
            self.flush()
        return message_id in self._entries

    @property
    def total_bytes(self) -> int:
        if self.deferred:
            self.flush()
        return self._bytes

    def flush(self) -> None:
        """Take in the deferred entries."""
        pending = self.deferred[:]
        self.deferred.clear()  # in place: callers keep its `append`
        if not self._lru:
            for entry in pending:
                self.add(_new_tuple(Message, entry[:_LRU_SIZE]), entry[_LRU_SIZE] - ENTRY_OVERHEAD, entry[-1])
            return
        keys = list(map(_id_of, pending))
        if self._append_new(keys, pending, sum(map(_size_of, pending))):
            return
        entries, popitem = self._entries, self._entries.popitem
        max_entries, max_bytes, total = self.max_entries, self.max_bytes, self._bytes
        for entry in pending:  # add's LRU branch, inline
            key, size = entry[4], entry[_LRU_SIZE]
            if key in entries or size > max_bytes:
                continue
            while entries and (len(entries) >= max_entries or total + size > max_bytes):
                total -= popitem(last=False)[1][_LRU_SIZE]
            entries[key] = entry
            total += size
        self._bytes = total

    def add(self, message: Message, payload_size: int, now: float) -> bool:
        """Record `message`. False (and nothing changes) when its id is already recorded or it is
        larger than the whole history may hold."""
        if self.deferred:
            self.flush()
        entries = self._entries
        key = message.id
        if key in entries:
            return False
        size = payload_size + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return False
        if self._lru:  # LeastRecentlyUsed inline: nothing expires, evict the front of the order
            if len(entries) >= self.max_entries or self._bytes + size > self.max_bytes:
                popitem = entries.popitem
                while entries and (len(entries) >= self.max_entries or self._bytes + size > self.max_bytes):
                    self._bytes -= popitem(last=False)[1][_LRU_SIZE]
            entries[key] = (*message, size, now)
            self._bytes += size
            return True
        if now >= self._next_expiry:
            self.prune(now)
        retention = self.retention
        while entries and (len(entries) >= self.max_entries or self._bytes + size > self.max_bytes):
            victim = retention.evict()
            if victim is None:
                raise AssertionError("retention strategy lost track of entries")
            self._bytes -= entries.pop(victim).size
        entry = HistoryEntry(message, size, now)
        entries[message.id] = entry
        self._bytes += size
        retention.added(message.id, entry)
        expires = retention.expires_at(entry)
        if expires < self._next_expiry:
            self._next_expiry = expires
        return True

    def add_many(self, messages: list[Message], payload_size: int, now: float) -> list[Message]:
        """Record each of `messages` (each charged `payload_size`) as `add` would, in order; the ones
        recorded (those whose id was not, also not earlier in the list)."""
        if self.deferred:
            self.flush()
        entries = self._entries
        size = payload_size + ENTRY_OVERHEAD
        if not self._lru or size > self.max_bytes:
            return [m for m in messages if self.add(m, payload_size, now)]
        keys = list(map(_id_of, messages))
        if self._append_new(keys, map(tuple.__add__, messages, repeat((size, now))), size * len(keys)):
            return messages
        added: list[Message] = []
        append, popitem = added.append, entries.popitem
        max_entries, max_bytes = self.max_entries, self.max_bytes - size
        total = self._bytes
        for message in messages:  # add's LRU branch, inline
            key = message[4]  # .id
            if key in entries:
                continue
            while entries and (len(entries) >= max_entries or total > max_bytes):
                total -= popitem(last=False)[1][_LRU_SIZE]
            entries[key] = (*message, size, now)
            total += size
            append(message)
        self._bytes = total
        return added

    def _append_new(self, keys: list[bytes], values: Iterable[tuple[Any, ...]], size: int) -> bool:
        """The LRU branch of `add` for many entries at once, in C calls rather than a loop, when it
        ends as adding them one by one would: every key new and distinct, and all of them fitting the
        bounds together (the oldest entries are evicted first either way). False (nothing changed)
        otherwise."""
        entries = self._entries
        n = len(keys)
        if n > self.max_entries or size > self.max_bytes or not entries.keys().isdisjoint(keys):
            return False
        if len(set(keys)) != n:
            return False
        excess = len(entries) + n - self.max_entries
        if excess > 0:
            self._bytes -= sum(map(_size_of, map(_entry_of, map(entries.popitem, repeat(False, excess)))))
        while entries and self._bytes + size > self.max_bytes:
            self._bytes -= entries.popitem(last=False)[1][_LRU_SIZE]
        entries.update(zip(keys, values, strict=True))
        self._bytes += size
        return True

    def get(self, message_id: bytes, now: float | None = None) -> Message | None:
        """The message with this id, or None. With `now`, expired messages are dropped first."""
        if self.deferred:
            self.flush()
        if now is not None and now >= self._next_expiry:
            self.prune(now)
        entry = self._entries.get(message_id)
        if entry is None:
            return None
        if self._lru:
            self._entries.move_to_end(message_id)
            message: Message = _new_tuple(Message, entry[:_LRU_SIZE])
            return message
        self.retention.accessed(message_id, entry)
        return entry.message  # type: ignore[no-any-return]

    def prune(self, now: float) -> int:
        """Drop expired messages; returns how many."""
        if self.deferred:
            self.flush()
        expired = self.retention.expired(now)
        for key in expired:
            self._bytes -= self._entries.pop(key).size
        self._next_expiry = self.retention.next_expiry()
        return len(expired)
