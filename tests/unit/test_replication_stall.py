"""The follower judges the database by how long its read took, not by how late the event loop was: a
loop busy with one long change for longer than UNHEALTHY_AFTER_S must not make a replica whose
database answered at once refuse every request (503) — it did under load in bench.push."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from controller.replication import UNHEALTHY_AFTER_S, Follower
from controller.store import ChangeBatch


class Plane:
    def __init__(self, read_s: float = 0.0) -> None:
        self.version = 7
        self.unavailable: str | None = None
        self.applied: list[ChangeBatch | None] = []

        def changes_since(since: int) -> ChangeBatch:
            time.sleep(read_s)
            return ChangeBatch(since, since, [], [], [], [])

        self.store = SimpleNamespace(changes_since=changes_since)
        self.lock = asyncio.Lock()

    async def apply(self, batch: ChangeBatch | None) -> None:
        self.applied.append(batch)


async def test_a_stalled_loop_with_a_quick_database_stays_healthy():
    plane = Plane()
    follower = Follower(plane, on_unavailable=lambda: None)  # type: ignore[arg-type]
    catch_up = asyncio.create_task(follower._catch_up())
    await asyncio.sleep(0)  # the read is on its way in a worker thread
    time.sleep(UNHEALTHY_AFTER_S + 0.3)  # the loop is busy with something long, synchronously
    assert await catch_up is None
    assert len(plane.applied) == 1


async def test_a_database_slower_than_the_limit_is_unavailable():
    plane = Plane(read_s=UNHEALTHY_AFTER_S + 0.2)
    follower = Follower(plane, on_unavailable=lambda: None)  # type: ignore[arg-type]
    assert await follower._catch_up() == f"database unavailable: no answer within {UNHEALTHY_AFTER_S:g} s"
    assert plane.applied == []
