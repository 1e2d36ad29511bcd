"""Delta polls (`GET /v1/netmap?delta=1`): a node holding a recent map gets only what changed, and the
delta turns its map into exactly the full map; an unknown, too old or pre-restart serial gets the full
map with its kind; polls without delta=1 get the full map as before deltas, byte for byte."""

from __future__ import annotations

import asyncio
import json

from pydantic import TypeAdapter

from controller.mesh import MAP_HISTORY
from tests.support import ControllerHarness, Host
from wire import api
from wire.delta import apply_delta, netmap_delta
from wire.models import NetMap, NetMapDelta, NetMapUpdate

LONG = 30.0
UPDATE: TypeAdapter[NetMap | NetMapDelta] = TypeAdapter(NetMapUpdate)


async def full(controller: ControllerHarness, host: Host) -> NetMap:
    netmap = await controller.netmap(host)
    assert netmap is not None
    return netmap


async def update(
    controller: ControllerHarness, host: Host, since: int, timeout: float = 0
) -> NetMap | NetMapDelta | None:
    r = await controller.client.get(
        api.NETMAP, params={"since": since, "timeout": timeout, "delta": 1}, headers=host.auth
    )
    if r.status_code == 204:
        return None
    assert r.status_code == 200, r.text
    return UPDATE.validate_json(r.content)


async def delta_from(controller: ControllerHarness, host: Host, held: NetMap) -> NetMapDelta:
    """The delta the host gets holding `held`, checked to be exactly the change to its current map."""
    answer = await update(controller, host, since=held.serial)
    assert isinstance(answer, NetMapDelta), answer
    now = await full(controller, host)
    assert answer == netmap_delta(held, now)
    assert apply_delta(held, answer) == now
    return answer


async def test_a_new_peer_arrives_as_a_delta_of_one_peer_and_one_route(controller: ControllerHarness):
    a, b = await controller.enroll(), await controller.enroll()
    held = await full(controller, a)
    c = await controller.enroll()
    delta = await delta_from(controller, a, held)
    assert delta.base_serial == held.serial and delta.serial > held.serial
    assert [p.node_id for p in delta.peers_upserted] == [c.node_id]
    assert [r.destination for r in delta.routes_upserted] == [c.node_id]
    assert delta.peers_removed == [] and delta.routes_removed == []
    assert b.node_id not in {p.node_id for p in delta.peers_upserted}


async def test_a_waiting_delta_poll_wakes_with_the_delta(controller: ControllerHarness):
    a = await controller.enroll()
    held = await full(controller, a)
    waiting = asyncio.create_task(update(controller, a, since=held.serial, timeout=LONG))
    await controller.polls_parked(1)
    b = await controller.enroll()
    answer = await waiting
    assert isinstance(answer, NetMapDelta)
    assert apply_delta(held, answer) == await full(controller, a)
    assert [p.node_id for p in answer.peers_upserted] == [b.node_id]


async def test_a_delta_poll_at_the_current_serial_waits_and_says_nothing_new(controller: ControllerHarness):
    a = await controller.enroll()
    held = await full(controller, a)
    assert await update(controller, a, since=held.serial, timeout=0.1) is None


async def test_removal_and_rerouting_arrive_as_deltas(controller: ControllerHarness):
    a, b, c, d = [await controller.enroll() for _ in range(4)]
    held = await full(controller, a)
    r = await controller.client.delete(f"{api.NODES}/{d.node_id}", headers=controller.admin)
    assert r.status_code == 204
    delta = await delta_from(controller, a, held)
    assert delta.peers_removed == [d.node_id] and delta.routes_removed == [d.node_id]
    # A's link to B fails: B's /32 moves to the relay C, and the route to B goes via C.
    held = await full(controller, a)
    await controller.report(a, {"peer_id": b.node_id, "loss": 1.0, "handshake_age_s": 200})
    delta = await delta_from(controller, a, held)
    assert {p.node_id for p in delta.peers_upserted} == {b.node_id, c.node_id}
    assert [(r.destination, r.via) for r in delta.routes_upserted] == [(b.node_id, c.node_id)]
    # C now relays: its own delta says forward.
    held_c = await full(controller, c)
    assert held_c.forward


async def test_a_series_of_changes_always_gives_deltas_that_rebuild_the_map(controller: ControllerHarness):
    hosts = [await controller.enroll() for _ in range(3)]
    held = {h.node_id: await full(controller, h) for h in hosts}
    for step in range(6):
        if step % 3 == 0:
            hosts.append(await controller.enroll())
        elif step % 3 == 1:
            a, b = hosts[0], hosts[step % len(hosts) or 1]
            await controller.report(a, {"peer_id": b.node_id, "rtt_ms": 5.0 + step * 40, "loss": 0.0})
        else:
            gone = hosts.pop(1)
            r = await controller.client.delete(f"{api.NODES}/{gone.node_id}", headers=controller.admin)
            assert r.status_code == 204
            del held[gone.node_id]
        for h in hosts:
            if h.node_id not in held:
                held[h.node_id] = await full(controller, h)
                continue
            now = await full(controller, h)
            if now.serial != held[h.node_id].serial:
                await delta_from(controller, h, held[h.node_id])
            held[h.node_id] = now


async def test_a_serial_the_controller_no_longer_keeps_gets_the_full_map(controller: ControllerHarness):
    a = await controller.enroll()
    first = await full(controller, a)
    for _ in range(MAP_HISTORY):
        await controller.enroll()
    now = await full(controller, a)
    for since in (0, first.serial, now.serial + 5):
        answer = await update(controller, a, since=since)
        assert isinstance(answer, NetMap) and answer == now
    r = await controller.client.get(api.NETMAP, params={"since": 0, "delta": 1}, headers=a.auth)
    assert json.loads(r.content)["kind"] == "full"


async def test_after_a_restart_a_held_serial_gets_the_full_map(controller: ControllerHarness):
    a = await controller.enroll()
    held = await full(controller, a)
    await controller.enroll()
    await controller.restart()
    answer = await update(controller, a, since=held.serial)
    assert isinstance(answer, NetMap) and answer == await full(controller, a)


async def test_polls_without_delta_get_the_map_as_before(controller: ControllerHarness):
    a = await controller.enroll()
    held = await full(controller, a)
    await controller.enroll()
    r = await controller.client.get(api.NETMAP, params={"since": held.serial}, headers=a.auth)
    body = json.loads(r.content)
    assert "kind" not in body and body["serial"] > held.serial
    assert list(body) == ["serial", "node", "peers", "routes", "forward", "protocol_version"]
    r = await controller.client.get(api.NETMAP, params={"since": held.serial, "delta": 1}, headers=a.auth)
    with_kind = json.loads(r.content)
    assert with_kind["kind"] == "delta"


async def test_a_bad_delta_flag_is_a_clear_422(controller: ControllerHarness):
    a = await controller.enroll()
    r = await controller.client.get(api.NETMAP, params={"delta": "maybe"}, headers=a.auth)
    assert r.status_code == 422 and "delta" in r.json()["detail"]
