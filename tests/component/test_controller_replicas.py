"""Several controller replicas on one PostgreSQL, in one process: a change made through one replica
reaches agents long-polling on another, keys, addresses and removals stay exactly-once, an agent's
client moves to the next replica when one fails, and a replica that loses its database says so and
serves nothing until it is back."""

from __future__ import annotations

import asyncio

import httpx

from agent.client import ControllerClient
from agent.targets import Targets
from tests.support import DEADLINE_S, eventually, make_host, poll_netmap
from wire import api
from wire.models import NetMap


async def test_a_host_enrolled_through_one_replica_is_in_a_map_waiting_on_the_other(replicas):
    _pg, _url, (a, b) = replicas
    first = await a.enroll()
    r = await poll_netmap(b, first, 0)  # B knows a node A enrolled a moment ago
    assert r.status_code == 200, r.text
    held = NetMap.model_validate_json(r.content)
    waiting = asyncio.create_task(poll_netmap(b, first, held.serial, timeout=30))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    second = await a.enroll()
    answer = await asyncio.wait_for(waiting, DEADLINE_S)
    assert answer.status_code == 200
    update = NetMap.model_validate_json(answer.content)
    assert [p.name for p in update.peers] == [second.name]
    # Both replicas give the same map the same serial: a host can move between them freely.
    again = NetMap.model_validate_json((await poll_netmap(a, first, 0)).content)
    assert again.serial == update.serial and again.peers == update.peers


async def test_a_single_use_key_enrolls_once_whichever_replicas_are_asked(replicas):
    _pg, _url, (a, b) = replicas
    key = await a.new_key()
    hosts = [a.new_host() for _ in range(4)]
    answers = await asyncio.gather(*[(a if i % 2 else b).enroll_raw(h, key) for i, h in enumerate(hosts)])
    assert sorted(r.status_code for r in answers) == [200, 403, 403, 403]
    listed = (await b.client.get(api.PREAUTH_KEYS, headers=b.admin)).json()
    assert listed[0]["used_count"] == 1


async def test_hosts_enrolled_through_both_replicas_get_distinct_addresses(replicas):
    _pg, _url, (a, b) = replicas
    key = await a.new_key(reusable=True)
    hosts = [make_host(f"h{i}", i + 1) for i in range(8)]
    for i, h in enumerate(hosts):
        r = await (a if i % 2 else b).enroll_raw(h, key)
        assert r.status_code == 200, r.text
        h.address, h.credential = r.json()["tunnel_address"], r.json()["node_credential"]
    assert len({h.address for h in hosts}) == len(hosts)
    await eventually(
        "both views",
        lambda: len(a.app.state.plane.nodes) == len(b.app.state.plane.nodes) == 8,
        timeout=DEADLINE_S,
    )


async def test_a_node_removed_through_one_replica_is_gone_on_the_other(replicas):
    _pg, _url, (a, b) = replicas
    gone, stays = await a.enroll(), await a.enroll()
    held = NetMap.model_validate_json((await poll_netmap(b, stays, 0)).content)
    waiting = asyncio.create_task(poll_netmap(b, stays, held.serial, timeout=30))
    gone_held = NetMap.model_validate_json((await poll_netmap(b, gone, 0)).content)
    waiting_removed = asyncio.create_task(poll_netmap(b, gone, gone_held.serial, timeout=30))
    await asyncio.sleep(0.1)
    r = await a.client.delete(f"{api.NODES}/{gone.node_id}", headers=a.admin)
    assert r.status_code == 204
    update = NetMap.model_validate_json((await asyncio.wait_for(waiting, DEADLINE_S)).content)
    assert update.peers == []
    assert (await asyncio.wait_for(waiting_removed, DEADLINE_S)).status_code == 410
    assert (await poll_netmap(b, gone, 0)).status_code == 410  # for good, on every replica
    # Removing it again through the other replica removes nothing.
    assert (await b.client.delete(f"{api.NODES}/{gone.node_id}", headers=b.admin)).status_code == 404


async def test_the_agent_client_moves_to_the_next_replica_when_one_fails(replicas):
    _pg, _url, (a, b) = replicas
    host = await a.enroll()

    class Routed(httpx.AsyncBaseTransport):
        """http://a -> replica A (or a refused connection once A is 'down'), http://b -> replica B."""

        def __init__(self) -> None:
            self.a_down = False
            self.seen: list[str] = []

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            self.seen.append(request.url.host)
            if request.url.host == "a":
                if self.a_down:
                    raise httpx.ConnectError("connection refused", request=request)
                return await a.transport.handle_async_request(request)
            return await b.transport.handle_async_request(request)

    routed = Routed()
    targets = Targets("http://a,http://b")
    targets.order()
    while targets.current.url != "http://a":  # start on A, whatever the random spread picked
        targets.failed(targets.current)
    client = ControllerClient(
        "http://a,http://b", credential=host.credential, transport=routed, targets=targets
    )
    try:
        first = await client.netmap(0, 0)
        assert first is not None and routed.seen == ["a"]
        routed.a_down = True
        second = await client.netmap(0, 0)
        assert second is not None and second.serial == first.serial
        assert routed.seen == ["a", "a", "b"] and client.base_url == "http://b"
    finally:
        await client.aclose()


async def test_a_replica_that_loses_its_database_reports_unhealthy_and_refuses_writes(replicas):
    pg, url, (a, b) = replicas
    host = await a.enroll()
    database = url.rsplit("/", 1)[1]
    pg.psql(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
    pg.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'")
    held = NetMap.model_validate_json((await poll_netmap(a, host, 0)).content)
    waiting = asyncio.create_task(poll_netmap(a, host, held.serial, timeout=60))
    try:
        await eventually(
            "replica A to notice", lambda: a.app.state.plane.health() is not None, timeout=DEADLINE_S
        )
        r = await a.client.get(api.HEALTH)
        assert r.status_code == 503 and r.json()["status"] == "unhealthy"
        assert pg.password not in r.text
        # A long-poll held when the database went away is released with the reason, not a stale map.
        assert (await asyncio.wait_for(waiting, DEADLINE_S)).status_code == 503
        assert (await a.client.post(api.PREAUTH_KEYS, json={}, headers=a.admin)).status_code == 503
        # Enrollment starts with a nonce, which lives in the database too.
        assert (await a.client.post(api.ENROLL_NONCE)).status_code == 503
        assert (await poll_netmap(a, host, 0)).status_code == 503
    finally:
        pg.psql(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    # Both replicas lost it here (one database); each comes back by itself.
    await eventually(
        "recovery",
        lambda: a.app.state.plane.health() is b.app.state.plane.health() is None,
        timeout=DEADLINE_S,
    )
    assert (await a.client.get(api.HEALTH)).status_code == 200
    later = await b.enroll()
    await eventually(
        "replica A to catch up", lambda: later.node_id in a.app.state.plane.nodes, timeout=DEADLINE_S
    )


async def test_a_lost_listening_connection_is_replaced_and_nothing_is_missed(replicas):
    pg, url, (a, b) = replicas
    host = await a.enroll()
    database = url.rsplit("/", 1)[1]
    listener = b.app.state.follower._listener
    await eventually(
        "B to listen", lambda: listener is not None and listener.connected.is_set(), timeout=DEADLINE_S
    )
    held = NetMap.model_validate_json((await poll_netmap(b, host, 0)).content)
    pg.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{database}' AND query LIKE 'LISTEN%'"
    )
    await eventually(
        "the listening connection to drop", lambda: not listener.connected.is_set(), timeout=DEADLINE_S
    )
    waiting = asyncio.create_task(poll_netmap(b, host, held.serial, timeout=30))
    other = await a.enroll()  # while B is not listening, maybe
    update = NetMap.model_validate_json((await asyncio.wait_for(waiting, DEADLINE_S)).content)
    assert [p.name for p in update.peers] == [other.name]
    await eventually("B to listen again", listener.connected.is_set, timeout=DEADLINE_S)
