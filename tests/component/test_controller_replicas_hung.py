"""A replica whose database stops answering (a network that drops everything: no error, no reset,
only silence) keeps answering its agents: /v1/health says it is unhealthy, held long-polls are
released with the reason and map requests answer at once, even while a write waits on the database.
When the database answers again the replica is healthy and writes go through. A served replica told to
stop (SIGTERM) while calls hang on the database exits all the same: nothing waits on them past a
deadline (store calls run in daemon threads)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from lab.postgres import PostgresCluster
from tests.support import (
    DEADLINE_S,
    HangingLink,
    ManualClock,
    Replica,
    eventually,
    poll_netmap,
    start_controller,
    stop_process,
)
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


async def test_a_served_replica_stops_on_sigterm_while_its_database_hangs(
    tmp_path: Path, postgres: PostgresCluster
):
    url = sa.engine.make_url(postgres.create_database())
    link = HangingLink(str(url.host), int(url.port or 5432))
    through = url.set(host="127.0.0.1", port=link.port).render_as_string(hide_password=False)
    served = start_controller(tmp_path / "a", {**os.environ, "WGMESH_DB": through})
    try:
        admin = {"Authorization": f"Bearer {(served.state_dir / 'admin-credential').read_text().strip()}"}
        with served.http() as c:
            key = c.post(api.PREAUTH_KEYS, json={}, headers=admin).json()["key"]
            enrolled = served.enroll("h1", key)
            assert enrolled.status_code == 200, enrolled.text
            node = {"Authorization": f"Bearer {enrolled.json()['node_credential']}"}
            assert c.get(api.NETMAP, params={"since": 0}, headers=node).status_code == 200  # last seen due
            link.cut()
            # a write waits on the silent database, and so does the follower's read
            threading.Thread(target=_quietly, args=(c, admin), daemon=True).start()
            await eventually(
                "the replica to say it is unhealthy",
                lambda: asyncio.to_thread(lambda: c.get(api.HEALTH, timeout=ANSWER_S).status_code == 503),
                DEADLINE_S,
            )
            served.process.terminate()
            try:
                code = await asyncio.to_thread(served.process.wait, DEADLINE_S)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"controller serve still runs {DEADLINE_S:g} s after SIGTERM") from None
        # uvicorn ends a graceful shutdown by raising the signal it caught again
        assert code in (0, -signal.SIGTERM), served.process.stderr.read() if served.process.stderr else ""
    finally:
        link.heal()
        stop_process(served.process)
        link.close()


def _quietly(c: httpx.Client, admin: dict[str, str]) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the server may go away first
        c.post(api.PREAUTH_KEYS, json={}, headers=admin, timeout=60)
