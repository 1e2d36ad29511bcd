"""What used to live in one controller's memory, shared by replicas on one PostgreSQL: an enrollment
nonce one replica issued is taken by any replica, once; a key rotation asked through one replica is
in the maps the other serves, its reports may reach either, and two replicas never start two
rotations where one is allowed."""

from __future__ import annotations

import asyncio

from keys import WireGuardPrivateKey
from tests.support import DEADLINE_S, Replica, enroll_request, eventually, poll_netmap
from wire import api
from wire.models import NetMap


async def post_enroll(replica: Replica, body: str):
    return await replica.client.post(api.ENROLL, content=body, headers={"Content-Type": "application/json"})


async def test_a_nonce_issued_by_one_replica_enrolls_through_the_other_once(replicas):
    _pg, _url, (a, b) = replicas
    key = await a.new_key(reusable=True)
    nonce = await a.nonce()
    first = await post_enroll(b, enroll_request(a.new_host(), key, nonce).model_dump_json())
    assert first.status_code == 200, first.text
    # The same nonce, signed by another host, through either replica: refused.
    for replica in (a, b):
        again = await post_enroll(replica, enroll_request(a.new_host(), key, nonce).model_dump_json())
        assert again.status_code == 403 and "nonce is unknown, already used or expired" in again.text


async def test_one_nonce_sent_to_both_replicas_at_once_enrolls_one_host(replicas):
    _pg, _url, (a, b) = replicas
    key = await a.new_key(reusable=True)
    for _round in range(5):
        nonce = await b.nonce()
        bodies = [enroll_request(a.new_host(), key, nonce).model_dump_json() for _ in range(2)]
        answers = await asyncio.gather(post_enroll(a, bodies[0]), post_enroll(b, bodies[1]))
        assert sorted(r.status_code for r in answers) == [200, 403]

    async def five_listed() -> bool:
        listed = [(await r.client.get(api.NODES, headers=r.admin)).json() for r in (a, b)]
        return all(len(nodes) == 5 for nodes in listed)

    # Each replica takes the other's last enrollment a moment after it was made; none lists a sixth.
    await eventually("both replicas to list the 5 hosts", five_listed, timeout=DEADLINE_S)


async def test_a_rotation_asked_through_one_replica_runs_through_the_other(replicas):
    _pg, _url, (a, b) = replicas
    rotating, peer = await a.enroll(), await a.enroll()
    await eventually("B to know both nodes", lambda: len(b.app.state.plane.nodes) == 2, timeout=DEADLINE_S)
    held = NetMap.model_validate_json((await poll_netmap(b, rotating, 0)).content)
    waiting = asyncio.create_task(poll_netmap(b, rotating, held.serial, timeout=30))
    await asyncio.sleep(0.1)
    r = await a.client.post(f"{api.NODES}/{rotating.node_id}/rotate", headers=a.admin)
    assert r.status_code == 202, r.text
    rotation_id = r.json()["rotation_id"]
    asked = NetMap.model_validate_json((await asyncio.wait_for(waiting, DEADLINE_S)).content)
    assert asked.node.key_rotation == rotation_id  # B's map asks for A's rotation

    new = WireGuardPrivateKey.generate().public_key().base64()
    for replica, phase in ((b, "prepare"), (a, "commit")):
        body = {"rotation_id": rotation_id, "phase": phase, "wg_public_key": new}
        answer = await replica.client.post(api.KEY, json=body, headers=rotating.auth)
        assert answer.status_code == 200, (phase, answer.text)
    # The commit went through A; B pushes the new key to the peer and the rotation is over there too.
    await eventually(
        "B to see the key",
        lambda: b.app.state.plane.nodes[rotating.node_id].wg_public_key == new,
        timeout=DEADLINE_S,
    )
    peer_map = NetMap.model_validate_json((await poll_netmap(b, peer, 0)).content)
    assert [p.wg_public_key.base64() for p in peer_map.peers] == [new]
    info = (await b.client.get(f"{api.NODES}/{rotating.node_id}", headers=b.admin)).json()
    assert info["rotation"] == "idle"
    # The same commit again through B (an agent that lost the answer) is accepted and changes nothing.
    body = {"rotation_id": rotation_id, "phase": "commit", "wg_public_key": new}
    assert (await b.client.post(api.KEY, json=body, headers=rotating.auth)).status_code == 200


async def test_two_replicas_asked_at_once_start_one_rotation(replicas):
    _pg, _url, (a, b) = replicas
    hosts = [await a.enroll() for _ in range(4)]
    await eventually("B to know every node", lambda: len(b.app.state.plane.nodes) == 4, timeout=DEADLINE_S)
    for first, second in ((hosts[0], hosts[1]), (hosts[2], hosts[3])):
        answers = await asyncio.gather(
            a.client.post(f"{api.NODES}/{first.node_id}/rotate", headers=a.admin),
            b.client.post(f"{api.NODES}/{second.node_id}/rotate", headers=b.admin),
        )
        assert sorted(r.status_code for r in answers) == [202, 409], [r.text for r in answers]
        refused = next(r for r in answers if r.status_code == 409)
        assert "rotating" in refused.json()["detail"]
        # Both replicas agree on which node rotates; finish it before the next round.
        started = next(r.json() for r in answers if r.status_code == 202)
        rotating = next(h for h in hosts if h.node_id == started["node_id"])
        new = WireGuardPrivateKey.generate().public_key().base64()
        for phase in ("prepare", "commit"):
            body = {"rotation_id": started["rotation_id"], "phase": phase, "wg_public_key": new}
            assert (await a.client.post(api.KEY, json=body, headers=rotating.auth)).status_code == 200
        await eventually(
            "the rotation to be over on both",
            lambda: b.app.state.plane.rotations.active() == [] == a.app.state.plane.rotations.active(),
            timeout=DEADLINE_S,
        )
