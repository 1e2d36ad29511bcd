"""Long-poll lifetimes: a held GET /v1/netmap ends when its client goes, and each node holds only a few.

Rules:
- A held poll ends as soon as its connection closes (ASGI `http.disconnect`), not when its timeout
  passes: an abandoned poll holds nothing after its client is gone.
- A node holds at most `per_node` polls at once (an agent needs one; a few allow a restart whose old
  connection is not closed yet). A new poll beyond that ends the node's oldest one, which is answered
  429: the newest request is the one a live agent waits on.

A held poll is one future that whichever comes first settles: the node's map changing (the notifier),
its timeout (a timer), its client going (a task reading the connection's ASGI messages), a newer poll
of the node (eviction). Nothing else is made per poll: this is the cost every agent pays per change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from controller.push import MapNotifier, settle

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
POLLS_PER_NODE = 4
_GONE, _EVICTED = object(), object()


class PollEnded(Exception):
    """Why a held poll stopped before its map changed or its timeout passed."""

    def __init__(self, evicted: bool) -> None:
        super().__init__("superseded" if evicted else "client gone")
        self.evicted = evicted  # True: a newer poll of the node took its place; False: the client went


class PollSlots:
    def __init__(self, notifier: MapNotifier, per_node: int = POLLS_PER_NODE) -> None:
        self.notifier = notifier
        self.per_node = per_node
        self._held: dict[int, dict[int, asyncio.Future[Any]]] = {}  # node -> ticket -> its poll, oldest first
        self._next = 0

    async def wait(self, node: int, receive: Receive, timeout: float) -> bool:
        """Hold a poll of `node` until its map may have changed (True) or `timeout` seconds pass
        (False); PollEnded(False) when the client goes, PollEnded(True) when a newer poll evicts it."""
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[Any] = loop.create_future()
        self._next += 1
        ticket = self._next
        held = self._held.setdefault(node, {})
        held[ticket] = ended
        while len(held) > self.per_node:
            settle(held.pop(next(iter(held))), _EVICTED)
        self.notifier.park(node, ended)
        timer = loop.call_later(timeout, settle, ended, False)
        watch = loop.create_task(_watch(receive, ended))
        try:
            outcome = await ended
        finally:
            timer.cancel()
            watch.cancel()
            self.notifier.unpark(node, ended)
            mine = self._held.get(node)
            if mine is not None:
                mine.pop(ticket, None)
                if not mine:
                    del self._held[node]
        if outcome is _EVICTED or outcome is _GONE:
            raise PollEnded(evicted=outcome is _EVICTED)
        return bool(outcome)

    def held(self, node: int) -> int:
        """How many polls `node` holds now."""
        return len(self._held.get(node, ()))


async def _watch(receive: Receive, ended: asyncio.Future[Any]) -> None:
    """Settles `ended` when the client has gone (or its connection cannot be read). A GET has no body:
    anything but a disconnect is ignored."""
    try:
        while (await receive()).get("type") != "http.disconnect":
            pass
    except Exception:  # a connection that cannot be read is gone
        pass
    settle(ended, _GONE)
