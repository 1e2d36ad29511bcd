"""Push: long-polling agents wait here until their map changes.

Each held poll parks one future under its node; `notify` resolves and forgets a node's futures, so
every poll of that node wakes once and a later poll parks anew. A node nobody waits for costs nothing,
and notifying it costs a dictionary lookup. A future, not an event with a task around it: at 5,000
agents a change wakes 5,000 polls, and each costs the controller what it takes to wake it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


class MapNotifier:
    def __init__(self) -> None:
        self._parked: dict[int, list[asyncio.Future[Any]]] = {}

    def notify(self, nodes: Iterable[int]) -> None:
        parked = self._parked
        for node in nodes:
            futures = parked.pop(node, None)
            if futures is not None:
                for f in futures:
                    if not f.done():
                        f.set_result(True)

    def notify_all(self) -> None:
        """Wake every waiter (say, to tell them this replica can no longer serve)."""
        self.notify(list(self._parked))

    def park(self, node: int, future: asyncio.Future[Any]) -> None:
        """`future` gets the result True at the next `notify` of `node` (unless it is done by then)."""
        self._parked.setdefault(node, []).append(future)

    def unpark(self, node: int, future: asyncio.Future[Any]) -> None:
        """Forget `future` (notified or not)."""
        futures = self._parked.get(node)
        if futures is not None and future in futures:
            futures.remove(future)
            if not futures:
                del self._parked[node]

    async def wait(self, node: int, timeout: float) -> bool:
        """Wait until `node` is notified or `timeout` seconds pass; True when notified."""
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[bool] = loop.create_future()
        self.park(node, woken)
        timer = loop.call_later(timeout, settle, woken, False)
        try:
            return await woken
        finally:
            timer.cancel()
            self.unpark(node, woken)

    def waiting(self) -> int:
        """How many nodes have a request waiting."""
        return len(self._parked)


def settle(future: asyncio.Future[Any], result: object) -> None:
    """`future`'s result, unless something else settled it first."""
    if not future.done():
        future.set_result(result)
