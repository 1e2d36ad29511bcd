"""A replica whose database stops answering (a network that drops everything: no error, no reset,
only silence) keeps answering its agents: /v1/health says it is unhealthy, held long-polls are
released with the reason and map requests answer at once, even while a write waits on the database.
When the database answers again the replica is healthy and writes go through."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from lab.postgres import PostgresCluster
from tests.support import DEADLINE_S, HangingLink, ManualClock, Replica, eventually, poll_netmap
from wire import api
from wire.models import NetMap

ANSWER_S = 5.0
"""What a request that needs no database may take while the database hangs: far less than the
database driver's own timeouts, so a replica whose event loop waited on the database fails it."""


@pytest.fixture
async def hung(
    tmp_path: Path, postgres: PostgresCluster, controller_clock: ManualClock
) -> AsyncIterator[tuple[HangingLink, Replica]]:
    url = sa.engine.make_url(postgres.create_database())
    link = HangingLink(str(url.host), int(url.port or 5432))
    through = url.set(host="127.0.0.1", port=link.port).render_as_string(hide_password=False)
    replica = Replica("a", tmp_path / "controller", controller_clock, through)
    try:
        yield link, replica
    finally:
        link.heal()
        await replica.close()
        link.close()


async def test_a_replica_whose_database_hangs_answers_health_and_polls_at_once(hung):
    link, a = hung
    host = await a.enroll()
    held = NetMap.model_validate_json((await poll_netmap(a, host, 0)).content)
    waiting = asyncio.create_task(poll_netmap(a, host, held.serial, timeout=60))
    await a.polls_parked(1)
    link.cut()
    # An admin write under way when the database went silent waits on it; nothing else does.
    write = asyncio.create_task(a.client.post(api.PREAUTH_KEYS, json={}, headers=a.admin))
    await asyncio.sleep(0)
    health = await asyncio.wait_for(a.client.get(api.HEALTH), ANSWER_S)
    assert health.status_code in (200, 503)
    fresh = await asyncio.wait_for(poll_netmap(a, host, 0), ANSWER_S)
    assert fresh.status_code in (200, 503), fresh.text
    await eventually(
        "the replica to say it is unhealthy",
        lambda: a.app.state.plane.health() is not None,
        timeout=DEADLINE_S,
    )
    r = await asyncio.wait_for(a.client.get(api.HEALTH), ANSWER_S)
    assert r.status_code == 503 and r.json()["status"] == "unhealthy", r.text
    # The poll held across the cut is released with the reason, not left hanging on a stale map.
    released = await asyncio.wait_for(waiting, DEADLINE_S)
    assert released.status_code == 503 and "database" in released.json()["detail"]
    # The write waiting on the database is answered too (its outcome is the database's: 503 here).
    assert (await asyncio.wait_for(write, DEADLINE_S)).status_code == 503
    refused = await asyncio.wait_for(a.client.post(api.PREAUTH_KEYS, json={}, headers=a.admin), ANSWER_S)
    assert refused.status_code == 503
    link.heal()
    await eventually("recovery", lambda: a.app.state.plane.health() is None, timeout=DEADLINE_S)
    assert (await a.client.post(api.PREAUTH_KEYS, json={}, headers=a.admin)).status_code == 201
    assert (await a.client.get(api.HEALTH)).status_code == 200
