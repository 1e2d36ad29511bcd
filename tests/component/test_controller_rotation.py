"""Key rotation on the controller, over HTTP: the admin asks, the node's map asks it, the node's key
reports record the new key and push it to every peer's map; refusals change nothing; state survives a
restart; `--all` goes one node at a time; a node that never answers is given up."""

from __future__ import annotations

import pytest

from keys import WireGuardPrivateKey
from tests.support import ControllerHarness, Host
from wire import api


async def rotate(c: ControllerHarness, node_id: int, status: int = 202) -> dict:
    r = await c.client.post(f"{api.NODES}/{node_id}/rotate", headers=c.admin)
    assert r.status_code == status, r.text
    return r.json()


async def report(
    c: ControllerHarness, host: Host, rotation_id: int, phase: str, key: str, status: int = 200
) -> dict:
    body = {"rotation_id": rotation_id, "phase": phase, "wg_public_key": key}
    r = await c.client.post(api.KEY, json=body, headers=host.auth)
    assert r.status_code == status, r.text
    return r.json()


async def node(c: ControllerHarness, node_id: int) -> dict:
    r = await c.client.get(f"{api.NODES}/{node_id}", headers=c.admin)
    assert r.status_code == 200
    return r.json()


@pytest.fixture
async def three(controller: ControllerHarness) -> list[Host]:
    return [await controller.enroll() for _ in range(3)]


async def test_a_rotation_from_request_to_every_peers_map(
    controller: ControllerHarness, three: list[Host]
) -> None:
    a, b, c = three
    info = await rotate(controller, a.node_id)
    assert info["state"] == "requested"
    rotation_id = info["rotation_id"]
    a_map = await controller.netmap(a)
    assert a_map is not None and a_map.node.key_rotation == rotation_id
    b_map = await controller.netmap(b)
    assert b_map is not None and b_map.node.key_rotation is None
    assert (await node(controller, a.node_id))["rotation"] == "requested"

    new = WireGuardPrivateKey.generate().public_key().base64()
    await report(controller, a, rotation_id, "prepare", new)
    assert (await node(controller, a.node_id))["rotation"] == "prepared"
    b_before = await controller.netmap(b)
    assert b_before is not None and all(
        p.wg_public_key.base64() != new for p in b_before.peers
    )  # never pre-installed

    controller.clock.advance(5)
    await report(controller, a, rotation_id, "commit", new)
    shown = await node(controller, a.node_id)
    assert shown["wg_public_key"] == new and shown["rotation"] == "idle"
    assert shown["key_created_at"] > shown["enrolled_at"]
    for peer_host in (b, c):
        m = await controller.netmap(peer_host)
        assert m is not None
        assert next(p for p in m.peers if p.node_id == a.node_id).wg_public_key.base64() == new
    a_after = await controller.netmap(a)
    assert a_after is not None and a_after.node.key_rotation is None
    await report(controller, a, rotation_id, "commit", new)  # the same commit again: fine


async def test_refusals_are_one_line_and_change_nothing(
    controller: ControllerHarness, three: list[Host]
) -> None:
    a, b, _c = three
    r = await controller.client.post(f"{api.NODES}/99/rotate", headers=controller.admin)
    assert r.status_code == 404 and r.json()["detail"] == "no node 99"
    await rotate(controller, a.node_id)
    before = (await controller.client.get(api.ROTATIONS, headers=controller.admin)).json()
    again = await rotate(controller, a.node_id, status=409)
    assert "already rotating" in again["detail"]
    neighbour = await rotate(controller, b.node_id, status=409)
    assert "neighbour" in neighbour["detail"]
    r = await controller.client.post(api.ROTATE_ALL, headers=controller.admin)
    assert r.status_code == 409 and "\n" not in r.json()["detail"]
    stale = WireGuardPrivateKey.generate().public_key().base64()
    await report(controller, b, 1234, "commit", stale, status=409)
    taken = await report(
        controller, a, before["nodes"][0]["rotation_id"], "commit", b.wg.public_key().base64(), 409
    )
    assert "already belongs" in taken["detail"]
    after = (await controller.client.get(api.ROTATIONS, headers=controller.admin)).json()
    assert after == before


async def test_rotate_all_one_node_at_a_time_and_state_survives_a_restart(
    controller: ControllerHarness, three: list[Host]
) -> None:
    r = await controller.client.post(api.ROTATE_ALL, headers=controller.admin)
    assert r.status_code == 202 and r.json()["campaign_running"]
    done = []
    for _ in three:
        progress = (await controller.client.get(api.ROTATIONS, headers=controller.admin)).json()
        active = [n for n in progress["nodes"] if n["state"] in ("requested", "prepared")]
        assert len(active) == 1
        host = next(h for h in three if h.node_id == active[0]["node_id"])
        await controller.restart()  # nothing is lost in between
        m = await controller.netmap(host)
        assert m is not None and m.node.key_rotation == active[0]["rotation_id"]
        new = WireGuardPrivateKey.generate().public_key().base64()
        await report(controller, host, active[0]["rotation_id"], "prepare", new)
        await report(controller, host, active[0]["rotation_id"], "commit", new)
        done.append(host.node_id)
    assert done == sorted(h.node_id for h in three)
    progress = (await controller.client.get(api.ROTATIONS, headers=controller.admin)).json()
    assert not progress["campaign_running"] and {n["outcome"] for n in progress["nodes"]} == {"done"}


async def test_a_node_that_never_answers_is_given_up_and_its_map_stops_asking(
    controller: ControllerHarness, three: list[Host]
) -> None:
    a = three[0]
    info = await rotate(controller, a.node_id)
    controller.clock.advance(121)
    await controller.app.state.plane.tick()
    shown = (await controller.client.get(api.ROTATIONS, headers=controller.admin)).json()["nodes"][0]
    assert shown["state"] == "idle" and shown["outcome"] == "timed_out"
    m = await controller.netmap(a)
    assert m is not None and m.node.key_rotation is None
    await report(
        controller,
        a,
        info["rotation_id"],
        "prepare",
        WireGuardPrivateKey.generate().public_key().base64(),
        409,
    )


async def test_the_schedule_rotates_the_oldest_key(tmp_path, controller_clock) -> None:  # type: ignore[no-untyped-def]
    c = ControllerHarness(tmp_path / "scheduled", controller_clock, key_rotation_interval_s=3600)
    try:
        hosts = [await c.enroll() for _ in range(2)]
        await c.app.state.plane.tick()
        assert all(
            n["state"] == "idle" for n in (await c.client.get(api.ROTATIONS, headers=c.admin)).json()["nodes"]
        )
        controller_clock.advance(3601)
        await c.app.state.plane.tick()
        nodes = (await c.client.get(api.ROTATIONS, headers=c.admin)).json()["nodes"]
        assert [n["state"] for n in nodes] == ["requested", "idle"] and nodes[0]["node_id"] == hosts[
            0
        ].node_id
    finally:
        await c.close()
