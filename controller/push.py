"""Push: long-polling agents wait here until their map changes.

One asyncio.Event per node that somebody waits for; `notify` sets and forgets it, so every waiter of
that node wakes once and a later waiter gets a fresh event. The event goes away with its last waiter,
so nodes nobody waits for cost nothing, and notifying them costs a dictionary lookup.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


class MapNotifier:
    def __init__(self) -> None:
        self._events: dict[int, asyncio.Event] = {}
        self._waiters: dict[int, int] = {}

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
        self._waiters[node] = self._waiters.get(node, 0) + 1
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that arrives
            # as the event is set, and the cancelled request (an agent stopping) runs on
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return False
        finally:
            left = self._waiters[node] - 1
            if left:
                self._waiters[node] = left
            else:
                del self._waiters[node]
                if self._events.get(node) is event:
                    del self._events[node]
        return True

    def waiting(self) -> int:
        """How many nodes have a request waiting."""
        return len(self._waiters)
