"""Long-poll lifetimes: a held GET /v1/netmap ends when its client goes, and each node holds only a few.

Rules:
- A held poll ends as soon as its connection closes (ASGI `http.disconnect`), not when its timeout
  passes: an abandoned poll holds nothing after its client is gone.
- A node holds at most `per_node` polls at once (an agent needs one; a few allow a restart whose old
  connection is not closed yet). A new poll beyond that ends the node's oldest one, which is answered
  429: the newest request is the one a live agent waits on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Guard = Callable[[Awaitable[Any]], Awaitable[Any]]
POLLS_PER_NODE = 4


class PollEnded(Exception):
    """Why a held poll stopped before its map changed or its timeout passed."""

    def __init__(self, evicted: bool) -> None:
        super().__init__("superseded" if evicted else "client gone")
        self.evicted = evicted  # True: a newer poll of the node took its place; False: the client went


class PollSlots:
    def __init__(self, per_node: int = POLLS_PER_NODE) -> None:
        self.per_node = per_node
        self._held: dict[int, OrderedDict[int, asyncio.Event]] = {}
        self._next = 0

    @contextlib.asynccontextmanager
    async def hold(self, node: int, receive: Receive) -> AsyncIterator[Guard]:
        """A slot for one held poll of `node`; yields `guarded(awaitable)`, which runs the awaitable
        unless the client goes (PollEnded(False)) or a newer poll evicts this one (PollEnded(True))."""
        self._next += 1
        ticket = self._next
        evicted = asyncio.Event()
        held = self._held.setdefault(node, OrderedDict())
        held[ticket] = evicted
        while len(held) > self.per_node:
            _, oldest = held.popitem(last=False)
            oldest.set()
        gone = asyncio.ensure_future(_disconnected(receive))
        kicked = asyncio.ensure_future(evicted.wait())

        async def guarded(work: Awaitable[Any]) -> Any:
            task = asyncio.ensure_future(work)
            try:
                await asyncio.wait({task, gone, kicked}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if task.done() and not task.cancelled():
                return task.result()
            raise PollEnded(evicted=kicked.done())

        try:
            yield guarded
        finally:
            for t in (gone, kicked):
                t.cancel()
            await asyncio.gather(gone, kicked, return_exceptions=True)
            mine = self._held.get(node)
            if mine is not None:
                mine.pop(ticket, None)
                if not mine:
                    del self._held[node]

    def held(self, node: int) -> int:
        """How many polls `node` holds now."""
        return len(self._held.get(node, ()))


async def _disconnected(receive: Receive) -> None:
    """Returns when the client has gone. A GET has no body: anything but a disconnect is ignored."""
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return
