"""A bounded priority queue: highest priority first, first-in first-out within a priority.

Used for each peer's send queue and each peer's inbound queue. Bounded by item count and by bytes;
`push` answers False when full and the caller decides: wait (backpressure for a program's send),
or drop and count (a relayed message). It never grows past its bounds.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

from p2p.core.message import PRIORITY_MAX, PRIORITY_MIN

T = TypeVar("T")


class BoundedPriorityQueue(Generic[T]):
    # Each priority's items and their sizes are in two deques side by side, not one of (item, size)
    # pairs: a tuple per queued item is one more object the garbage collector tracks (per message).
    __slots__ = ("_buckets", "_bytes", "_descending", "_len", "_sizes", "max_bytes", "max_items")

    def __init__(self, max_items: int, max_bytes: int) -> None:
        if max_items < 1 or max_bytes < 1:
            raise ValueError("queue bounds must be positive")
        self.max_items = max_items
        self.max_bytes = max_bytes
        # index = priority; index 0 unused
        self._buckets: list[deque[T]] = [deque() for _ in range(PRIORITY_MAX + 1)]
        self._sizes: list[deque[int]] = [deque() for _ in range(PRIORITY_MAX + 1)]
        # (items, sizes) from the highest priority down: the same deques
        self._descending = [
            (self._buckets[p], self._sizes[p]) for p in range(PRIORITY_MAX, PRIORITY_MIN - 1, -1)
        ]
        self._len = 0
        self._bytes = 0

    def __len__(self) -> int:
        return self._len

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def has_room(self, size: int) -> bool:
        """True when an item of `size` bytes fits. An empty queue takes any one item, however large,
        so a single message up to the frame limit can always be sent."""
        if self._len == 0:
            return True
        return self._len < self.max_items and self._bytes + size <= self.max_bytes

    def push(self, item: T, priority: int, size: int) -> bool:
        if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
            raise ValueError(f"priority {priority} out of range")
        n = self._len
        if n and (n >= self.max_items or self._bytes + size > self.max_bytes):  # has_room, inline
            return False
        self._buckets[priority].append(item)
        self._sizes[priority].append(size)
        self._len = n + 1
        self._bytes += size
        return True

    def pop(self) -> T | None:
        if not self._len:
            return None
        for bucket, sizes in self._descending:
            if bucket:
                self._len -= 1
                self._bytes -= sizes.popleft()
                return bucket.popleft()
        raise AssertionError("length and buckets disagree")

    def pop_batch(self, max_items: int, max_bytes: int) -> list[T]:
        """Up to `max_items` items in priority order, stopping before `max_bytes` would be passed
        (the first item is always taken)."""
        out: list[T] = []
        total = 0
        for bucket, sizes in self._descending:
            while bucket and len(out) < max_items:
                size = sizes[0]
                if out and total + size > max_bytes:
                    return self._taken(out, total)
                sizes.popleft()
                out.append(bucket.popleft())
                total += size
            if len(out) >= max_items:
                break
        return self._taken(out, total)

    def _taken(self, out: list[T], total: int) -> list[T]:
        self._len -= len(out)
        self._bytes -= total
        return out

    def clear(self) -> None:
        for bucket in self._buckets:
            bucket.clear()
        for sizes in self._sizes:
            sizes.clear()
        self._len = 0
        self._bytes = 0
