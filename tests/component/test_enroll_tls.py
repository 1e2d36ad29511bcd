"""Enrollment over the pinned controller CA, and the nonce that makes a recorded enrollment useless:
the pin in the pre-auth key is checked against the CA the controller serves and the CA is kept for
later starts; a wrong pin stores nothing; a replayed or stale enrollment is refused and changes
nothing (before protocol version 2 the replay enrolled again and rotated the victim's credential)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.daemon import AgentError
from agent.trust import CA_FILE_NAME
from controller.app import create_app
from controller.settings import Settings
from controller.sqlstore import SqlStore
from controller.tls import managed_tls, operator_tls
from tests.support import MESH_CIDR, AgentMesh, ControllerHarness, enroll_request
from wire import api
from wire.preauth import parse_preauth_key

JSON = {"Content-Type": "application/json"}


async def test_the_agent_pins_the_ca_named_in_its_key_and_keeps_it(mesh: AgentMesh):
    key = parse_preauth_key(mesh.preauth_key)
    assert key.ca_pin == mesh.tls.ca_pin and key.ca_pin is not None
    h = await mesh.start("h1")
    stored = h.state_dir / CA_FILE_NAME
    assert stored.read_bytes() == mesh.tls.ca_pem
    assert stored.stat().st_mode & 0o777 == 0o600
    await mesh.stop("h1")
    # a later start needs no key: it trusts the stored CA
    h2 = await mesh.start("h1", enroll=False)
    assert h2.agent is not None and h2.agent.state is not None and h2.agent.state.node_id == 1


async def test_a_key_pinning_another_ca_enrolls_nothing_and_stores_nothing(mesh: AgentMesh):
    key = parse_preauth_key(mesh.preauth_key)
    mesh.preauth_key = f"{key.secret}.{'0' * 64}"
    with pytest.raises(AgentError) as refused:
        await mesh.start("h1")
    assert f"the controller's CA has pin {key.ca_pin}, the pre-auth key expects {'0' * 64}" in str(
        refused.value
    )
    h = mesh.hosts["h1"]
    assert not (h.state_dir / CA_FILE_NAME).exists() and not (h.state_dir / "node.json").exists()
    assert (await mesh.admin_get(api.NODES)).json() == []


async def test_a_replayed_enrollment_is_refused_and_the_node_keeps_its_credential(
    controller: ControllerHarness,
):
    host = controller.new_host("victim")
    body = enroll_request(host, await controller.new_key(reusable=True), await controller.nonce())
    first = await controller.client.post(api.ENROLL, content=body.model_dump_json(), headers=JSON)
    assert first.status_code == 200, first.text
    host.credential = first.json()["node_credential"]
    again = await controller.client.post(api.ENROLL, content=body.model_dump_json(), headers=JSON)
    assert again.status_code == 403
    assert again.json()["detail"].startswith("enrollment nonce is unknown, already used or expired")
    assert await controller.netmap(host) is not None  # the first credential still works


async def test_a_stale_or_unissued_nonce_is_refused(controller: ControllerHarness, controller_clock):
    key = await controller.new_key(reusable=True)
    stale = enroll_request(controller.new_host(), key, await controller.nonce())
    controller_clock.advance(121)
    r = await controller.client.post(api.ENROLL, content=stale.model_dump_json(), headers=JSON)
    assert r.status_code == 403 and "nonce" in r.json()["detail"]
    unissued = enroll_request(controller.new_host(), key)
    r = await controller.client.post(api.ENROLL, content=unissued.model_dump_json(), headers=JSON)
    assert r.status_code == 403 and "nonce" in r.json()["detail"]
    nodes = await controller.client.get(api.NODES, headers=controller.admin)
    assert nodes.json() == []


async def test_with_operator_certificates_keys_carry_no_pin_and_no_ca_is_served(tmp_path: Path):
    import httpx

    made = managed_tls(tmp_path / "elsewhere", ["controller"], datetime.now(UTC))  # stands in for a CA
    tls = operator_tls(made.cert_file, made.key_file)
    settings = Settings(state_dir=tmp_path / "c", mesh_cidr=MESH_CIDR)
    settings.state_dir.mkdir(mode=0o700)
    store = SqlStore(settings.database_url)
    app = create_app(settings, store, tls=tls)
    admin = (settings.state_dir / "admin-credential").read_text().strip()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://c") as c:
        assert (await c.get(api.TLS_CA)).status_code == 404
        r = await c.post(api.PREAUTH_KEYS, json={}, headers={"Authorization": f"Bearer {admin}"})
        assert r.status_code == 201 and "." not in r.json()["key"]
    app.state.plane.close()
