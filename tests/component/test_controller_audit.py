"""The audit trail over the admin API, on SQLite and PostgreSQL: every admin action and security event
is there with who, what, when, the result and the source address; no secret ever is; filters select
by time, node and action; unauthenticated callers cannot flood it; it survives a restart."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support import ControllerHarness
from wire import api
from wire.audit import ACTOR_HEADER

POLICY = '[[rules]]\nname = "all"\nfrom = ["*"]\nto = ["*"]\n'


async def events(controller: ControllerHarness, **params: Any) -> list[dict[str, Any]]:
    r = await controller.client.get(api.AUDIT, params=params, headers=controller.admin)
    assert r.status_code == 200, r.text
    return list(r.json())


def summary(evs: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(e["action"], e["result"], e["actor"]) for e in evs]


async def test_admin_actions_and_security_events_are_recorded_without_secrets(controller: ControllerHarness):
    alice = {**controller.admin, ACTOR_HEADER: "alice@ops"}
    r = await controller.client.post(api.PREAUTH_KEYS, json={"role": "worker"}, headers=alice)
    key, key_id = r.json()["key"], r.json()["id"]
    host = await controller.enroll(key=key)
    again = await controller.enroll_raw(controller.new_host("intruder"), key)
    assert again.status_code == 403
    wrong = await controller.client.get(api.NODES, headers={"Authorization": "Bearer wgmesh-admin-guess"})
    assert wrong.status_code == 401
    as_node = await controller.client.get(api.NODES, headers=host.auth)
    assert as_node.status_code == 403
    r = await controller.client.put(
        api.POLICY, json={"text": POLICY, "author": "bob"}, headers=controller.admin
    )
    assert r.status_code == 200
    bad = await controller.client.put(api.POLICY, json={"text": "rules = 3", "author": "bob"}, headers=alice)
    assert bad.status_code == 422
    rolled = await controller.client.post(
        api.POLICY + "/rollback", json={"version": 1, "author": "bob"}, headers=controller.admin
    )
    assert rolled.status_code == 200
    assert (
        await controller.client.post(f"{api.NODES}/{host.node_id}/rotate", headers=alice)
    ).status_code == 202
    assert (await controller.client.delete(f"{api.PREAUTH_KEYS}/{key_id}", headers=alice)).status_code == 204
    assert (await controller.client.delete(f"{api.PREAUTH_KEYS}/999", headers=alice)).status_code == 404
    assert (await controller.client.delete(f"{api.NODES}/{host.node_id}", headers=alice)).status_code == 204
    assert (await controller.client.delete(f"{api.NODES}/{host.node_id}", headers=alice)).status_code == 404

    trail = await events(controller)
    assert summary(trail) == [
        ("preauth.create", "ok", "admin (alice@ops)"),
        ("enroll", "ok", f"host {host.hostname}"),
        ("enroll", "refused", "host intruder"),
        ("admin.auth", "refused", "anonymous"),
        ("admin.auth", "refused", "anonymous"),
        ("policy.set", "ok", "admin (bob)"),
        ("policy.set", "refused", "admin (bob)"),
        ("policy.rollback", "ok", "admin (bob)"),
        ("key.rotate", "ok", "admin (alice@ops)"),
        ("preauth.revoke", "ok", "admin (alice@ops)"),
        ("preauth.revoke", "refused", "admin (alice@ops)"),
        ("node.remove", "ok", "admin (alice@ops)"),
        ("node.remove", "refused", "admin (alice@ops)"),
    ]
    by_action = {(e["action"], e["result"]): e for e in trail}
    assert all(e["source"] == "127.0.0.1" for e in trail)
    assert by_action["preauth.create", "ok"]["detail"] == (
        f"pre-auth key {key_id}: role worker, tagged with its role, single-use, expires in 3600 s"
    )
    assert by_action["enroll", "ok"]["node_id"] == host.node_id
    assert by_action["enroll", "ok"]["node_name"] == host.name
    assert by_action["enroll", "refused"]["detail"] == f"single-use pre-auth key {key_id} was already used"
    assert [e["detail"] for e in trail if e["action"] == "admin.auth"] == [
        "GET /v1/nodes: wrong admin credential",
        "GET /v1/nodes: this route needs the admin credential, not a node credential",
    ]
    assert by_action["policy.set", "ok"]["policy_version"] == 1
    assert by_action["policy.rollback", "ok"]["policy_version"] == 2
    assert by_action["policy.rollback", "ok"]["detail"] == "version 1 restored as version 2"
    assert by_action["policy.set", "refused"]["detail"].startswith("policy refused, the one in force stays")
    assert by_action["node.remove", "ok"]["node_name"] == host.name
    assert by_action["node.remove", "refused"]["detail"] == f"no node {host.node_id}"
    assert by_action["preauth.revoke", "refused"]["detail"] == "no pre-auth key 999"
    text = str(trail)
    for secret in (key, host.credential, "wgmesh-admin-guess", controller.admin["Authorization"][7:]):
        assert secret not in text

    await controller.restart()
    assert summary(await events(controller)) == summary(trail)


async def test_filters_select_by_action_node_and_time(controller: ControllerHarness):
    a = await controller.enroll()
    controller.clock.advance(3600)
    b = await controller.enroll()
    await controller.client.put(api.POLICY, json={"text": POLICY}, headers=controller.admin)
    assert [e["action"] for e in await events(controller, action="policy")] == ["policy.set"]
    assert [e["action"] for e in await events(controller, action="preauth.create")] == ["preauth.create"] * 2
    assert [e["node_id"] for e in await events(controller, node=a.name)] == [a.node_id]
    assert [e["node_id"] for e in await events(controller, node=str(b.node_id))] == [b.node_id]
    later = (controller.clock.now()).isoformat()
    assert [e["action"] for e in await events(controller, since=later)] == [
        "preauth.create",
        "enroll",
        "policy.set",
    ]
    newest = await events(controller, limit=1)
    assert [e["action"] for e in newest] == ["policy.set"]


async def test_a_node_filter_that_is_no_id_is_a_name(controller: ControllerHarness):
    await controller.enroll()
    for node in ("\u00b3", "9" * 30):  # a digit int() refuses; an id past SQL's integers
        r = await controller.client.get(api.AUDIT, params={"node": node}, headers=controller.admin)
        assert r.status_code == 200 and r.json() == [], r.text


async def test_bad_filters_are_one_line_and_the_route_needs_the_admin(controller: ControllerHarness):
    for params, detail in (
        ({"action": "nonsense"}, "query.action: 'nonsense' is not an action"),
        ({"since": "yesterday"}, "query.since: expected an RFC 3339 time with a zone"),
        ({"since": "2026-01-01T10:00:00"}, "query.since: expected an RFC 3339 time with a zone"),
        ({"since": "1700000000"}, "query.since: expected an RFC 3339 time with a zone"),
        ({"limit": "0"}, "query.limit: Input should be greater than or equal to 1"),
    ):
        r = await controller.client.get(api.AUDIT, params=params, headers=controller.admin)
        assert r.status_code == 422 and r.json()["detail"].startswith(detail), (params, r.text)
    r = await controller.client.get(api.AUDIT)
    assert r.status_code == 401


async def test_an_unauthenticated_flood_is_throttled_and_counted(controller: ControllerHarness):
    async def guess(source: str) -> None:
        transport = httpx.ASGITransport(app=controller.app, client=(source, 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://controller") as client:
            r = await client.get(api.NODES, headers={"Authorization": "Bearer guess"})
            assert r.status_code == 401

    for _ in range(50):
        await guess("198.51.100.7")
    await guess("198.51.100.8")
    trail = await events(controller, action="admin.auth")
    sources = [e["source"] for e in trail]
    assert sources == ["198.51.100.7"] * 10 + ["198.51.100.8"]
    assert trail[-1]["detail"].endswith("(40 more such events before this one were not recorded)")
    controller.clock.advance(60)
    await guess("198.51.100.7")
    assert len(await events(controller, action="admin.auth")) == 12
