"""Peer events a program can follow: a peer came up (an authenticated connection exists) or went down
(its connection closed, heartbeats stopped, or it left the directory)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from p2p.core.directory import DirectoryEntry


@dataclass(frozen=True, slots=True)
class PeerUp:
    peer: DirectoryEntry


@dataclass(frozen=True, slots=True)
class PeerDown:
    peer: DirectoryEntry
    reason: str


PeerEvent = PeerUp | PeerDown


class PeerEventStream:
    """An async iterator of peer events from the moment it was created. Bounded: a subscriber that does
    not keep up loses the oldest events (`lost` counts them), the node never blocks on it."""

    def __init__(self, maxsize: int = 1024) -> None:
        self._queue: asyncio.Queue[PeerEvent | None] = asyncio.Queue(maxsize)
        self.lost = 0

    def put(self, event: PeerEvent | None) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.lost += 1
        self._queue.put_nowait(event)

    def close(self) -> None:
        self.put(None)

    def __aiter__(self) -> AsyncIterator[PeerEvent]:
        return self

    async def __anext__(self) -> PeerEvent:
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event
