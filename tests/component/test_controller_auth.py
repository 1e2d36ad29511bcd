"""Who may call what: a node reads only its own map and reports only its own links; admin routes need
the admin credential; every refusal says why."""

from __future__ import annotations

import pytest

from tests.support import ControllerHarness
from wire import api

ADMIN_ROUTES = [
    ("GET", api.NODES),
    ("GET", api.NODES + "/1"),
    ("DELETE", api.NODES + "/1"),
    ("GET", api.PREAUTH_KEYS),
    ("POST", api.PREAUTH_KEYS),
    ("DELETE", api.PREAUTH_KEYS + "/1"),
    ("GET", api.TOPOLOGY),
]
NODE_ROUTES = [("GET", api.NETMAP), ("POST", api.LINKS)]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES + NODE_ROUTES)
async def test_no_credential_is_401_with_a_reason(controller: ControllerHarness, method: str, path: str):
    r = await controller.client.request(method, path, json={})
    assert r.status_code == 401
    assert "missing credential" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
async def test_a_node_credential_does_not_open_admin_routes(
    controller: ControllerHarness, method: str, path: str
):
    node = await controller.enroll()
    r = await controller.client.request(method, path, json={}, headers=node.auth)
    assert r.status_code == 403 and "admin credential" in r.json()["detail"]
    assert (await controller.client.get(api.NODES, headers=controller.admin)).json()[0][
        "node_id"
    ] == node.node_id


@pytest.mark.parametrize(("method", "path"), NODE_ROUTES)
async def test_the_admin_credential_is_not_a_node(controller: ControllerHarness, method: str, path: str):
    r = await controller.client.request(method, path, json={"measurements": []}, headers=controller.admin)
    assert r.status_code == 403 and "node credential" in r.json()["detail"]


async def test_a_wrong_credential_is_401(controller: ControllerHarness):
    bogus = {"Authorization": "Bearer wgm_node_made-up"}
    assert (await controller.client.get(api.NETMAP, headers=bogus)).status_code == 401
    assert (await controller.client.get(api.NODES, headers=bogus)).status_code == 401
    basic = {"Authorization": "Basic dXNlcjpwYXNz"}
    assert (await controller.client.get(api.NODES, headers=basic)).status_code == 401


async def test_a_node_reads_only_its_own_map(controller: ControllerHarness):
    a = await controller.enroll()
    b = await controller.enroll()
    for params in ({}, {"node_id": b.node_id}, {"node": b.node_id}):
        r = await controller.client.get(api.NETMAP, params=params, headers=a.auth)
        assert r.status_code == 200
        assert r.json()["node"]["node_id"] == a.node_id
    # What A's map says about B is only B's public part.
    peer = r.json()["peers"][0]
    assert set(peer) == {
        "node_id",
        "name",
        "role",
        "wg_public_key",
        "identity_public_key",
        "tunnel_address",
        "endpoints",
        "allowed_ips",
        "persistent_keepalive",
    }
    assert b.credential not in r.text


async def test_a_node_reports_only_its_own_links(controller: ControllerHarness):
    a, b, c = [await controller.enroll() for _ in range(3)]
    # A can only speak for the links it is an end of: it says B-C is broken, as "peer C" of itself.
    await controller.report(a, {"peer_id": c.node_id, "rtt_ms": 40.0, "loss": 0.0, "handshake_age_s": 5})
    topology = (await controller.client.get(api.TOPOLOGY, headers=controller.admin)).json()
    edges = {(e["a"], e["b"]): e for e in topology["edges"]}
    assert edges[(a.node_id, c.node_id)]["rtt_ms"] == 40.0
    assert (b.node_id, c.node_id) not in edges and topology["unmeasured_links"] == 2  # B-C untouched
    r = await controller.client.post(
        api.LINKS,
        json={"measurements": [{"peer_id": a.node_id, "loss": 1.0}]},
        headers=a.auth,
    )
    assert r.status_code == 409 and "reporting node itself" in r.json()["detail"]


async def test_a_removed_nodes_credential_stops_working(controller: ControllerHarness):
    a = await controller.enroll()
    assert (
        await controller.client.delete(f"{api.NODES}/{a.node_id}", headers=controller.admin)
    ).status_code == 204
    r = await controller.client.get(api.NETMAP, headers=a.auth)
    assert r.status_code == 410 and "removed from the mesh" in r.json()["detail"]
