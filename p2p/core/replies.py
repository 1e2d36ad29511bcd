"""The answers a node gave to requests, kept a while so a retried request is answered, not run again.

A request sent with retries (`Node.request(..., retries=N)`) travels every time under the same message
id (derived from the caller's idempotency key when one is given), so (sender, id) names one request:

    cache.begin(sender, id, now)  -> NEW (run the handler), RUNNING (its answer will go out; send
                                     nothing now) or the answer item kept from the first run
    cache.finish(sender, id, answer, now)   the handler answered: keep the answer item

Rules:
- Bounded whatever arrives: at most `max_entries` requests and `max_bytes` of kept answers (the
  oldest go first), and each is kept `max_age` seconds after it began. A request retried after its
  entry is gone runs again: idempotency holds within those bounds, and the node's history (which
  drops a repeated message id) usually covers longer.
- A request still running when its entry is evicted is answered once, when it finishes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

from p2p.core.frame import Item


class Begun(Enum):
    NEW = "new"
    RUNNING = "running"


@dataclass(slots=True)
class _Entry:
    began: float
    answer: tuple[Item, int] | None = None  # (item, size) once finished


class ReplyCache:
    __slots__ = ("_bytes", "_entries", "max_age", "max_bytes", "max_entries")

    def __init__(self, *, max_entries: int, max_bytes: int, max_age: float) -> None:
        if max_entries < 1 or max_bytes < 1 or max_age <= 0:
            raise ValueError("reply cache bounds must be positive")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._entries: OrderedDict[tuple[int, bytes], _Entry] = OrderedDict()  # oldest first
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: tuple[int, bytes]) -> bool:
        return key in self._entries

    def begin(self, sender: int, request_id: bytes, now: float) -> Begun | tuple[Item, int]:
        self.prune(now)
        key = (sender, request_id)
        entry = self._entries.get(key)
        if entry is None:
            self._entries[key] = _Entry(now)
            self._shrink()
            return Begun.NEW
        return entry.answer if entry.answer is not None else Begun.RUNNING

    def finish(self, sender: int, request_id: bytes, item: Item, size: int, now: float) -> None:
        entry = self._entries.get((sender, request_id))
        if entry is None or entry.answer is not None:
            return
        entry.answer = (item, size)
        self._bytes += size
        self._shrink()
        self.prune(now)

    def prune(self, now: float) -> None:
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if now - entry.began < self.max_age:
                return
            self._drop(key)

    def _shrink(self) -> None:
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple[int, bytes]) -> None:
        entry = self._entries.pop(key)
        if entry.answer is not None:
            self._bytes -= entry.answer[1]
