"""Push: long-polling agents wait here until their map changes.

One asyncio.Event per node that somebody waits for; `notify` sets and forgets it, so every waiter of
that node wakes once and a later waiter gets a fresh event. Notifying a node nobody waits for costs a
dictionary lookup.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


class MapNotifier:
    def __init__(self) -> None:
        self._events: dict[int, asyncio.Event] = {}

    def notify(self, nodes: Iterable[int]) -> None:
        for node in nodes:
            event = self._events.pop(node, None)
            if event is not None:
                event.set()

    async def wait(self, node: int, timeout: float) -> bool:
        """Wait until `node` is notified or `timeout` seconds pass; True when notified."""
        event = self._events.get(node)
        if event is None:
            event = self._events[node] = asyncio.Event()
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def waiting(self) -> int:
        """How many nodes have somebody waiting."""
        return len(self._events)
