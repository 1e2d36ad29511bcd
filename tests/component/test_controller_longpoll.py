"""The long-poll push: a waiting agent gets its new map as soon as it changes, only agents whose map
really changed are woken, and a removal reaches every peer at once."""

from __future__ import annotations

import asyncio

from tests.support import LONG_POLL_S, ControllerHarness, serial_of
from wire import api
from wire.models import NetMap


async def test_a_poll_with_the_current_serial_waits_and_then_says_nothing_new(controller: ControllerHarness):
    a = await controller.enroll()
    serial = await serial_of(controller, a)
    assert await controller.netmap(a, since=serial, timeout=0.2) is None
    assert await controller.netmap(a, since=serial, timeout=0) is None


async def test_an_older_or_unknown_serial_gets_the_map_at_once(controller: ControllerHarness):
    a = await controller.enroll()
    serial = await serial_of(controller, a)
    for since in (0, serial - 1, serial + 5):
        netmap = await controller.netmap(a, since=since, timeout=LONG_POLL_S)
        assert netmap is not None and netmap.serial == serial


async def test_a_waiting_poll_wakes_when_a_peer_enrolls(controller: ControllerHarness):
    a = await controller.enroll()
    serial = await serial_of(controller, a)
    waiting = asyncio.create_task(controller.netmap(a, since=serial, timeout=LONG_POLL_S))
    await controller.polls_parked(1)
    b = await controller.enroll()
    netmap = await waiting
    assert netmap is not None and netmap.serial > serial
    assert [p.node_id for p in netmap.peers] == [b.node_id]


async def test_only_nodes_whose_map_changed_are_woken(controller: ControllerHarness):
    hosts = [await controller.enroll() for _ in range(4)]
    a, b = hosts[:2]
    serials = {h.node_id: await serial_of(controller, h) for h in hosts}
    polls = {
        h.node_id: asyncio.create_task(controller.netmap(h, since=serials[h.node_id], timeout=1.0))
        for h in hosts
    }
    await controller.polls_parked(4)
    # A says the A-B link is down: A and B go through a relay, which starts forwarding; the fourth
    # node's map is the same.
    await controller.report(a, {"peer_id": b.node_id, "loss": 1.0})
    got = {n: await t for n, t in polls.items()}
    assert got[a.node_id] is not None and got[a.node_id].serial == serials[a.node_id] + 1
    assert got[b.node_id] is not None and got[b.node_id].serial == serials[b.node_id] + 1
    relay = next(r.via for r in got[a.node_id].routes if r.destination == b.node_id)
    assert got[relay] is not None and got[relay].forward
    (other,) = {h.node_id for h in hosts} - {a.node_id, b.node_id, relay}
    assert got[other] is None, "the fourth node's map did not change, so it must not be woken"
    assert await serial_of(controller, hosts[[h.node_id for h in hosts].index(other)]) == serials[other]


async def test_a_cost_change_alone_wakes_nobody(controller: ControllerHarness):
    a, b, c = [await controller.enroll() for _ in range(3)]
    serials = {h.node_id: await serial_of(controller, h) for h in (a, b, c)}
    polls = {
        h.node_id: asyncio.create_task(controller.netmap(h, since=serials[h.node_id], timeout=1.0))
        for h in (a, b, c)
    }
    await controller.polls_parked(3)
    # Both ends measure the A-B link faster than the default: its cost moves, no next hop does.
    await controller.report(a, {"peer_id": b.node_id, "rtt_ms": 2.0, "loss": 0.0, "handshake_age_s": 3})
    await controller.report(b, {"peer_id": a.node_id, "rtt_ms": 2.0, "loss": 0.0, "handshake_age_s": 3})
    assert {n: await t for n, t in polls.items()} == dict.fromkeys(polls)
    assert {h.node_id: await serial_of(controller, h) for h in (a, b, c)} == serials
    edges = (await controller.client.get(api.TOPOLOGY, headers=controller.admin)).json()["edges"]
    assert [e["weight"] for e in edges if {e["a"], e["b"]} == {a.node_id, b.node_id}] == [2.0]


async def test_nothing_changes_when_a_host_re_enrolls_with_the_same_data(controller: ControllerHarness):
    a, b = await controller.enroll(), await controller.enroll()
    serials = [await serial_of(controller, h) for h in (a, b)]
    await controller.enroll(b)
    assert [await serial_of(controller, h) for h in (a, b)] == serials


async def test_removal_reaches_every_peer_at_once(controller: ControllerHarness):
    a, b, c = [await controller.enroll() for _ in range(3)]
    serials = {h.node_id: await serial_of(controller, h) for h in (a, b, c)}
    polls = {
        h.node_id: asyncio.create_task(controller.netmap(h, since=serials[h.node_id], timeout=LONG_POLL_S))
        for h in (a, c)
    }
    removed_poll = asyncio.create_task(
        controller.client.get(
            api.NETMAP, params={"since": serials[b.node_id], "timeout": LONG_POLL_S}, headers=b.auth
        )
    )
    await controller.polls_parked(3)
    r = await controller.client.delete(f"{api.NODES}/{b.node_id}", headers=controller.admin)
    assert r.status_code == 204
    for host in (a, c):
        netmap = await polls[host.node_id]
        assert isinstance(netmap, NetMap)
        assert b.node_id not in {p.node_id for p in netmap.peers}
        assert b.node_id not in {route.destination for route in netmap.routes}
    gone = await removed_poll
    assert gone.status_code == 410 and "removed" in gone.json()["detail"]
    listed = (await controller.client.get(api.NODES, headers=controller.admin)).json()
    assert [n["node_id"] for n in listed] == [a.node_id, c.node_id]
    assert (
        await controller.client.get(f"{api.NODES}/{b.node_id}", headers=controller.admin)
    ).status_code == 404


async def test_holds_acknowledged_by_polls_reach_the_store_at_the_next_tick_and_at_shutdown(
    controller: ControllerHarness,
):
    """A removed node's address stays held in the store until every other node acknowledged a map
    without it; the acknowledgements of many polls are written together, by the periodic tick (or when
    the controller stops), not one transaction per poll."""
    a, b, c, d = [await controller.enroll() for _ in range(4)]
    r = await controller.client.delete(f"{api.NODES}/{b.node_id}", headers=controller.admin)
    assert r.status_code == 204
    assert {h.holder for h in controller.store.load().holds} == {a.node_id, c.node_id, d.node_id}
    for host in (a, c):
        await controller.netmap(host, since=await serial_of(controller, host))
    assert {h.holder for h in controller.store.load().holds} == {a.node_id, c.node_id, d.node_id}
    await controller.app.state.plane.tick()
    assert {h.holder for h in controller.store.load().holds} == {d.node_id}
    await controller.netmap(d, since=await serial_of(controller, d))
    await controller.restart()
    assert controller.store.load().holds == []


async def test_a_poll_in_another_form_than_agents_send_gets_the_same_answer(controller: ControllerHarness):
    # controller.poll_route answers the plain form agents send; the app's route answers the others
    a = await controller.enroll()
    serial = await serial_of(controller, a)
    await controller.enroll()
    plain = await controller.client.get(f"{api.NETMAP}?since={serial}&delta=1", headers=a.auth)
    encoded = "".join(f"%3{digit}" for digit in str(serial))  # the same serial, percent-encoded
    other = await controller.client.get(f"{api.NETMAP}?since={encoded}&delta=yes", headers=a.auth)
    assert plain.status_code == other.status_code == 200
    assert plain.json()["kind"] == "delta" and plain.content == other.content
    assert plain.headers["content-type"] == other.headers["content-type"] == "application/json"
    for query, wrong in (("since=-1", "since"), ("delta=maybe", "delta"), ("timeout=301", "timeout")):
        r = await controller.client.get(f"{api.NETMAP}?{query}", headers=a.auth)
        assert r.status_code == 422 and wrong in r.json()["detail"], (query, r.text)
