"""The policy over the admin API: set, get, check, test (naming the rule), history and rollback with
their audit entries; a bad document is refused whole and the one in force stays; maps follow at once;
nodes' agents report the version they enforce; the policy survives a restart."""

from __future__ import annotations

from tests.support import ControllerHarness, Host
from wire import api
from wire.models import NetMap

POLICY = """
# clients use the supervisor's API; workers talk to supervisors
relays = ["tag:supervisor"]
[[rules]]
name = "api"
from = ["tag:client"]
to = ["tag:supervisor"]
ports = ["tcp/8000"]
[[rules]]
name = "work"
from = ["tag:worker"]
to = ["tag:supervisor"]
[messages]
task_assignment = ["tag:supervisor"]
"""


async def tagged_mesh(controller: ControllerHarness) -> tuple[Host, Host, Host]:
    hosts = []
    for role in ("supervisor", "worker", "client"):
        hosts.append(await controller.enroll(key=await controller.new_key(role=role)))
    return hosts[0], hosts[1], hosts[2]


async def put(controller: ControllerHarness, text: str, **extra: str) -> dict:
    r = await controller.client.put(api.POLICY, json={"text": text, **extra}, headers=controller.admin)
    return {"status": r.status_code, **r.json()}


async def peers(controller: ControllerHarness, host: Host) -> list[int]:
    m = await controller.netmap(host)
    assert m is not None
    return [p.node_id for p in m.peers]


async def test_no_policy_is_the_full_mesh_and_a_policy_cuts_the_maps(controller: ControllerHarness):
    sup, worker, client = await tagged_mesh(controller)
    r = await controller.client.get(api.POLICY, headers=controller.admin)
    assert r.json() == {"policy": None}
    assert await peers(controller, client) == [sup.node_id, worker.node_id]
    info = await put(controller, POLICY, source="policy.toml", author="alice@ops")
    assert (info["status"], info["version"], info["author"], info["action"]) == (200, 1, "alice@ops", "set")
    assert await peers(controller, client) == [sup.node_id]
    assert await peers(controller, worker) == [sup.node_id]
    assert await peers(controller, sup) == [worker.node_id, client.node_id]
    m = NetMap.model_validate_json((await controller.client.get(api.NETMAP, headers=sup.auth)).content)
    assert m.policy is not None and m.policy.version == 1
    assert [(r.rule, [str(p) for p in r.peers], r.ports) for r in m.policy.inbound] == [
        ("api", [f"{client.address}/32"], ["tcp/8000"]),
        ("work", [f"{worker.address}/32"], ["any"]),
    ]
    assert m.policy.messages == {"task_assignment": ["tag:supervisor"]}
    assert m.node.tags == ["supervisor"] and [p.tags for p in m.peers] == [["worker"], ["client"]]
    got = (await controller.client.get(api.POLICY, headers=controller.admin)).json()["policy"]
    assert got["text"] == POLICY and got["version"] == 1


async def test_test_names_the_deciding_rule(controller: ControllerHarness):
    sup, worker, client = await tagged_mesh(controller)
    await put(controller, POLICY)

    async def test(src: Host, dst: Host, port: str | None = None) -> tuple[bool, str]:
        body = {"source": src.name, "destination": dst.name, "port": port}
        r = await controller.client.post(api.POLICY + "/test", json=body, headers=controller.admin)
        assert r.status_code == 200, r.text
        return r.json()["allowed"], r.json()["rule"]

    assert await test(client, sup, "8000") == (True, "api")
    assert await test(client, sup, "8001") == (False, "default deny (no rule matches)")
    assert await test(client, worker) == (False, "default deny (no rule matches)")
    assert await test(worker, sup, "udp/9") == (True, "work")
    for nobody in ("nobody", "\u00b3"):  # '³' is a digit that int() refuses
        r = await controller.client.post(
            api.POLICY + "/test", json={"source": nobody, "destination": sup.name}, headers=controller.admin
        )
        assert r.status_code == 404 and repr(nobody) in r.json()["detail"], r.text


async def test_a_bad_policy_is_refused_whole_and_the_old_one_stays(controller: ControllerHarness):
    sup, _worker, client = await tagged_mesh(controller)
    await put(controller, POLICY)
    before = await controller.netmap(client)
    bad = POLICY.replace('ports = ["tcp/8000"]', 'ports = ["tcp/80000"]').replace('"tag:worker"', '"team:w"')
    check = await controller.client.post(
        api.POLICY + "/check", json={"text": bad, "source": "p.toml"}, headers=controller.admin
    )
    assert check.json()["ok"] is False
    assert check.json()["problems"] == [
        "p.toml: rules[0].ports[0]: 'tcp/80000': ports are 1-65535",
        "p.toml: rules[1].from[0]: 'team:w': a selector is 'tag:NAME', 'node:NAME' or '*'",
    ]
    refused = await put(controller, bad, source="p.toml")
    assert refused["status"] == 422 and "rules[0].ports[0]" in refused["detail"]
    assert "rules[1].from[0]" in refused["detail"]
    history = (await controller.client.get(api.POLICY + "/history", headers=controller.admin)).json()
    assert [h["version"] for h in history] == [1]
    assert await controller.netmap(client, since=before.serial) is None  # nothing changed
    assert sup.node_id in await peers(controller, client)


async def test_history_and_rollback_keep_every_version(controller: ControllerHarness):
    _sup, worker, client = await tagged_mesh(controller)
    await put(controller, POLICY, author="alice")
    open_all = '[[rules]]\nfrom = ["*"]\nto = ["*"]\n'
    await put(controller, open_all, author="bob")
    assert worker.node_id in await peers(controller, client)
    r = await controller.client.post(
        api.POLICY + "/rollback", json={"version": 1, "author": "carol"}, headers=controller.admin
    )
    assert r.status_code == 200 and r.json()["version"] == 3 and r.json()["restored"] == 1
    assert worker.node_id not in await peers(controller, client)
    history = (await controller.client.get(api.POLICY + "/history", headers=controller.admin)).json()
    assert [(h["version"], h["author"], h["action"], h["restored"]) for h in history] == [
        (1, "alice", "set", None),
        (2, "bob", "set", None),
        (3, "carol", "rollback", 1),
    ]
    missing = await controller.client.post(
        api.POLICY + "/rollback", json={"version": 9}, headers=controller.admin
    )
    assert missing.status_code == 404
    await controller.restart()
    assert worker.node_id not in await peers(controller, client)
    state = (await controller.client.get(api.POLICY, headers=controller.admin)).json()["policy"]
    assert state["version"] == 3 and state["text"] == POLICY


async def test_agents_report_the_version_they_enforce(controller: ControllerHarness):
    sup, _worker, _client = await tagged_mesh(controller)
    await put(controller, POLICY)
    await controller.client.get(api.NETMAP, params={"since": 0, "policy": 1}, headers=sup.auth)
    info = (await controller.client.get(f"{api.NODES}/{sup.node_id}", headers=controller.admin)).json()
    assert info["policy_version"] == 1 and info["tags"] == ["supervisor"]
    assert info["policy_version_sent"] == 1


async def test_policy_routes_need_the_admin(controller: ControllerHarness):
    sup, _worker, _client = await tagged_mesh(controller)
    assert (await controller.client.get(api.POLICY)).status_code == 401
    assert (await controller.client.put(api.POLICY, json={"text": ""}, headers=sup.auth)).status_code == 403


async def test_clear_goes_back_to_the_full_mesh_as_a_new_version(controller: ControllerHarness):
    sup, worker, client = await tagged_mesh(controller)
    await put(controller, POLICY, author="alice")
    assert await peers(controller, client) == [sup.node_id]

    async def rollback(version: int) -> dict:
        r = await controller.client.post(
            api.POLICY + "/rollback", json={"version": version, "author": "bob"}, headers=controller.admin
        )
        return {"status": r.status_code, **r.json()}

    cleared = await rollback(0)
    assert (cleared["status"], cleared["version"], cleared["action"]) == (200, 2, "clear")
    m = await controller.netmap(client)
    assert (
        m is not None and m.policy is None and [p.node_id for p in m.peers] == [sup.node_id, worker.node_id]
    )
    state = (await controller.client.get(api.POLICY, headers=controller.admin)).json()["policy"]
    assert (state["version"], state["action"], state["text"]) == (2, "clear", None)
    test = await controller.client.post(
        api.POLICY + "/test",
        json={"source": client.name, "destination": worker.name},
        headers=controller.admin,
    )
    assert test.json() == {"allowed": True, "rule": "no policy (full mesh)", "version": None}
    info = (await controller.client.get(f"{api.NODES}/{sup.node_id}", headers=controller.admin)).json()
    assert info["policy_version_sent"] is None

    assert (await rollback(1))["version"] == 3
    m = await controller.netmap(client)
    assert m is not None and m.policy is not None and m.policy.version == 3
    assert [p.node_id for p in m.peers] == [sup.node_id]
    again = await rollback(2)  # a version that was a clear clears again
    assert (again["version"], again["action"], again["restored"]) == (4, "clear", 2)
    history = (await controller.client.get(api.POLICY + "/history", headers=controller.admin)).json()
    assert [(h["version"], h["action"], h["restored"]) for h in history] == [
        (1, "set", None),
        (2, "clear", 0),
        (3, "rollback", 1),
        (4, "clear", 2),
    ]
    await controller.restart()
    m = await controller.netmap(client)
    assert m is not None and m.policy is None and len(m.peers) == 2
    audit = (
        await controller.client.get(api.AUDIT, params={"action": "policy"}, headers=controller.admin)
    ).json()
    assert [(e["action"], e["policy_version"], e["detail"]) for e in audit] == [
        ("policy.set", 1, "version 1 from policy"),
        ("policy.clear", 2, "version 2: no policy (the full mesh)"),
        ("policy.rollback", 3, "version 1 restored as version 3"),
        ("policy.clear", 4, "version 2 (no policy) restored as version 4"),
    ]
