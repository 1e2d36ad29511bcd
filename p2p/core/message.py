"""What a p2p message is to a program: type, data, timestamp, sender, id and priority; and how ids are made.

Rules:
- Priorities run from PRIORITY_MIN (1, low) to PRIORITY_MAX (10, high); anything else is refused.
- A message id is 16 bytes: an 8-byte prefix chosen at random when a node starts, then a counter. Ids are
  unique per node run without reading randomness per message; the random prefix keeps restarts apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count, repeat
from typing import Any, NamedTuple

PRIORITY_MIN = 1
PRIORITY_MAX = 10
PRIORITY_DEFAULT = 5
MESSAGE_ID_LEN = 16
MAX_TYPE_LEN = 64


class Message(NamedTuple):
    """One delivered (or sent) message. `data` is the decoded payload (msgpack types: None, bool, int,
    float, str, bytes, list, dict). Immutable; a NamedTuple because it is built for every message and
    costs a third of a frozen dataclass to construct."""

    type: str
    data: Any
    timestamp: float
    sender: int
    id: bytes
    priority: int


def check_priority(priority: object) -> int:
    """Return `priority` if it is an int in [PRIORITY_MIN, PRIORITY_MAX]; raise ValueError otherwise."""
    if type(priority) is not int or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise ValueError(f"priority must be an integer {PRIORITY_MIN}..{PRIORITY_MAX}, got {priority!r}")
    return priority


def check_type(message_type: object) -> str:
    """Return `message_type` if it is a non-empty str of at most MAX_TYPE_LEN characters."""
    if not isinstance(message_type, str) or not 0 < len(message_type) <= MAX_TYPE_LEN:
        raise ValueError(
            f"message type must be a string of 1-{MAX_TYPE_LEN} characters, got {message_type!r}"
        )
    return message_type


class MessageIds:
    """Source of unique message ids for one node run. `stream` is the same ids as an iterator:
    `next(ids.stream)` makes one without a Python call (once per message sent)."""

    __slots__ = ("stream",)

    def __init__(self, prefix: bytes) -> None:
        if len(prefix) != 8:
            raise ValueError("message id prefix must be 8 bytes")
        # prefix + an 8-byte counter from 1 is the 16-byte big-endian integer (prefix << 64) + n
        first = (int.from_bytes(prefix, "big") << 64) + 1
        big = repeat("big")
        self.stream: Iterator[bytes] = map(int.to_bytes, count(first), repeat(MESSAGE_ID_LEN), big)  # type: ignore[arg-type]

    def next(self) -> bytes:
        return next(self.stream)
