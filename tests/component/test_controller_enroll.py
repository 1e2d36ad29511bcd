"""Enrollment as a host sees it: pre-auth keys (single use, races, expiry, revocation), re-enrollment
of the same identity, unique names, and refusals that change nothing."""

from __future__ import annotations

import asyncio
import ipaddress

from tests.support import MESH_CIDR, ControllerHarness, ManualClock, enroll_request
from wire import api


async def node_names(controller: ControllerHarness) -> list[str]:
    r = await controller.client.get(api.NODES, headers=controller.admin)
    assert r.status_code == 200
    return [n["name"] for n in r.json()]


async def test_a_host_gets_an_id_an_address_in_the_mesh_and_a_working_credential(
    controller: ControllerHarness,
):
    host = await controller.enroll(controller.new_host("web-1"))
    assert host.node_id >= 1 and host.name == "web-1"
    assert ipaddress.ip_address(host.address) in MESH_CIDR
    netmap = await controller.netmap(host)
    assert netmap is not None
    assert netmap.node.node_id == host.node_id and str(netmap.node.mesh_cidr) == str(MESH_CIDR)
    assert netmap.peers == [] and netmap.routes == []


async def test_a_single_use_key_used_by_two_concurrent_enrollments_lets_exactly_one_through(
    controller: ControllerHarness,
):
    key = await controller.new_key()
    hosts = [controller.new_host() for _ in range(2)]
    results = await asyncio.gather(*(controller.enroll_raw(h, key) for h in hosts))
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200, 403]
    refused = next(r for r in results if r.status_code == 403)
    assert "already used" in refused.json()["detail"]
    assert len(await node_names(controller)) == 1


async def test_an_expired_key_is_refused_with_the_reason(
    controller: ControllerHarness, controller_clock: ManualClock
):
    key = await controller.new_key(expires_in_s=60)
    controller_clock.advance(61)
    r = await controller.enroll_raw(controller.new_host(), key)
    assert r.status_code == 403 and "expired" in r.json()["detail"]
    assert await node_names(controller) == []


async def test_a_revoked_key_is_refused_with_the_reason(controller: ControllerHarness):
    key = await controller.new_key(reusable=True)
    await controller.enroll(key=key)
    keys = (await controller.client.get(api.PREAUTH_KEYS, headers=controller.admin)).json()
    assert keys[0]["used_count"] == 1 and keys[0]["key"] is None  # the secret is shown once only
    r = await controller.client.delete(f"{api.PREAUTH_KEYS}/{keys[0]['id']}", headers=controller.admin)
    assert r.status_code == 204
    r = await controller.enroll_raw(controller.new_host(), key)
    assert r.status_code == 403 and "revoked" in r.json()["detail"]
    assert len(await node_names(controller)) == 1


async def test_an_unknown_key_is_refused(controller: ControllerHarness):
    r = await controller.enroll_raw(controller.new_host(), "wgm_pak_not-a-key-anybody-made")
    assert r.status_code == 401 and r.json()["detail"] == "unknown pre-auth key"


async def test_a_reusable_key_enrolls_many_hosts_and_counts_them(controller: ControllerHarness):
    key = await controller.new_key(reusable=True, expires_in_s=None)
    for _ in range(3):
        await controller.enroll(key=key)
    keys = (await controller.client.get(api.PREAUTH_KEYS, headers=controller.admin)).json()
    assert keys[0]["used_count"] == 3 and keys[0]["expires_at"] is None


async def test_re_enrolling_the_same_identity_returns_the_same_node_with_a_fresh_credential(
    controller: ControllerHarness,
):
    host = await controller.enroll(controller.new_host("db"))
    first = (host.node_id, host.address, host.credential)
    old_auth = host.auth
    await controller.enroll(host)  # a fresh single-use key
    assert (host.node_id, host.address) == first[:2]
    assert host.credential != first[2]
    assert (await controller.client.get(api.NETMAP, headers=old_auth)).status_code == 401
    assert await controller.netmap(host) is not None
    assert await node_names(controller) == ["db"]


async def test_a_host_whose_answer_was_lost_may_retry_with_its_own_single_use_key(
    controller: ControllerHarness,
):
    key = await controller.new_key()
    host = controller.new_host()
    assert (await controller.enroll_raw(host, key)).status_code == 200
    retry = await controller.enroll_raw(host, key)
    assert retry.status_code == 200
    other = await controller.enroll_raw(controller.new_host(), key)
    assert other.status_code == 403 and "already used" in other.json()["detail"]


async def test_re_enrolling_with_a_new_wireguard_key_updates_every_peer(controller: ControllerHarness):
    a = await controller.enroll()
    b = await controller.enroll()
    before = await controller.netmap(b)
    assert before is not None
    from keys import WireGuardPrivateKey

    a.wg = WireGuardPrivateKey.generate()
    await controller.enroll(a)
    after = await controller.netmap(b, since=before.serial, timeout=5)
    assert after is not None and after.serial > before.serial
    assert after.peers[0].wg_public_key == a.wg.public_key()


async def test_nobody_can_claim_someone_elses_identity(controller: ControllerHarness):
    victim = await controller.enroll(controller.new_host("victim"))
    attacker = controller.new_host("attacker")
    request = enroll_request(attacker, await controller.new_key(), await controller.nonce())
    # The attacker names the victim's identity key but cannot sign with it.
    forged = request.model_copy(update={"identity_public_key": victim.identity.public_key()})
    r = await controller.client.post(
        api.ENROLL, content=forged.model_dump_json(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 403 and "signature" in r.json()["detail"]
    assert await node_names(controller) == ["victim"]
    assert await controller.netmap(victim) is not None  # the victim's credential still works


async def test_duplicate_hostnames_get_unique_names(controller: ControllerHarness):
    for _ in range(3):
        await controller.enroll(controller.new_host("web"))
    assert await node_names(controller) == ["web", "web-2", "web-3"]


async def test_a_wireguard_key_of_another_node_is_refused(controller: ControllerHarness):
    first = await controller.enroll()
    copycat = controller.new_host()
    copycat.wg = first.wg
    r = await controller.enroll_raw(copycat, await controller.new_key())
    assert r.status_code == 409 and f"node {first.node_id}" in r.json()["detail"]


async def test_another_protocol_version_is_refused(controller: ControllerHarness):
    host = controller.new_host()
    request = enroll_request(host, await controller.new_key(), await controller.nonce()).model_copy(
        update={"protocol_version": 99}
    )
    r = await controller.client.post(
        api.ENROLL, content=request.model_dump_json(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and "protocol version 99" in r.json()["detail"]


async def test_the_first_addresses_go_in_order_and_never_twice(controller: ControllerHarness):
    hosts = [await controller.enroll() for _ in range(5)]
    addresses = [h.address for h in hosts]
    assert addresses == [str(MESH_CIDR[i]) for i in range(1, 6)]
