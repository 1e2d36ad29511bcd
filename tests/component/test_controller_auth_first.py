"""Authenticate first, then validate (issue #8 item 8): a caller without a usable credential learns
nothing from the API's validation or from the mesh's state, whatever it sends."""

from __future__ import annotations

import ipaddress

import pytest

from tests.support import ControllerHarness
from wire import api

GARBAGE = b'{"this is": not json'
BODY_ROUTES = [
    ("POST", api.PREAUTH_KEYS),
    ("PUT", api.POLICY),
    ("POST", api.POLICY + "/check"),
    ("POST", api.POLICY + "/test"),
    ("POST", api.POLICY + "/rollback"),
    ("POST", api.LINKS),
    ("POST", api.KEY),
]
JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
async def test_a_garbage_body_without_credential_is_401_not_a_parse_error(
    controller: ControllerHarness, method: str, path: str
):
    r = await controller.client.request(method, path, content=GARBAGE, headers=JSON)
    assert r.status_code == 401, r.text
    assert "missing credential" in r.json()["detail"]


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
async def test_a_garbage_body_with_a_wrong_credential_is_401(
    controller: ControllerHarness, method: str, path: str
):
    bogus = {**JSON, "Authorization": "Bearer wgm_node_made-up"}
    r = await controller.client.request(method, path, content=GARBAGE, headers=bogus)
    assert r.status_code == 401, r.text


async def test_invalid_queries_and_paths_without_credential_are_401(controller: ControllerHarness):
    for method, path in [
        ("GET", api.NETMAP + "?since=-5&timeout=nope"),
        ("GET", api.TOPOLOGY + "?format=xml"),
        ("GET", api.NODES + "/not-a-number"),
        ("DELETE", api.PREAUTH_KEYS + "/0"),
    ]:
        r = await controller.client.request(method, path)
        assert r.status_code == 401, f"{method} {path}: {r.status_code} {r.text}"


async def test_enrolling_with_a_garbage_key_reveals_no_node(controller: ControllerHarness):
    first = await controller.enroll(controller.new_host("host-a"))
    copycat = controller.new_host()
    copycat.wg = first.wg  # would be a 409 naming host-a with a real key
    r = await controller.enroll_raw(copycat, "wgm_pak_not-a-key-anybody-made")
    assert r.status_code == 401, r.text
    assert r.json()["detail"] == "unknown pre-auth key"
    assert "host-a" not in r.text and str(first.node_id) not in r.text


async def test_enrolling_with_a_garbage_key_into_a_full_pool_says_only_the_key_is_unknown(
    tmp_path, controller_clock, store_url
):
    small = ControllerHarness(
        tmp_path / "small",
        controller_clock,
        db_url=store_url,
        mesh_cidr=ipaddress.ip_network("198.19.7.0/30"),
    )
    try:
        await small.enroll()
        await small.enroll()  # a /30 holds two hosts
        r = await small.enroll_raw(small.new_host(), "wgm_pak_not-a-key-anybody-made")
        assert r.status_code == 401 and r.json()["detail"] == "unknown pre-auth key"
        with_key = await small.enroll_raw(small.new_host(), await small.new_key())
        assert with_key.status_code == 409  # the pool is full: said only to a holder of a key
    finally:
        await small.close()


async def test_a_used_single_use_key_is_refused_before_the_signature_is_looked_at(
    controller: ControllerHarness,
):
    key = await controller.new_key()
    await controller.enroll(key=key)
    stranger = controller.new_host()
    r = await controller.enroll_raw(stranger, key)
    assert r.status_code == 403 and "already used" in r.json()["detail"]
