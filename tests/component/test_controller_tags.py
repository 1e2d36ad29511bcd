"""Tags: a pre-auth key gives the nodes it enrolls several tags, an admin changes a node's tags, the
policy follows at once and only the maps it changes get a new serial; tags stay across
re-enrollment and a restart; every change is in the audit trail; bad tags change nothing."""

from __future__ import annotations

from tests.support import ControllerHarness, Host
from wire import api

POLICY = """
[[rules]]
name = "gpu-jobs"
from = ["tag:scheduler"]
to = ["tag:gpu"]
"""


async def peers(controller: ControllerHarness, host: Host) -> list[int]:
    m = await controller.netmap(host)
    assert m is not None
    return [p.node_id for p in m.peers]


async def serial(controller: ControllerHarness, host: Host) -> int:
    m = await controller.netmap(host)
    assert m is not None
    return m.serial


async def info(controller: ControllerHarness, host: Host) -> dict:
    r = await controller.client.get(f"{api.NODES}/{host.node_id}", headers=controller.admin)
    assert r.status_code == 200
    return dict(r.json())


async def tag(controller: ControllerHarness, host: Host, tags: list[str] | None) -> dict:
    r = await controller.client.put(
        f"{api.NODES}/{host.node_id}/tags", json={"tags": tags}, headers=controller.admin
    )
    return {"status": r.status_code, **r.json()}


async def test_keys_with_several_tags_and_an_admin_retagging(controller: ControllerHarness):
    r = await controller.client.post(
        api.PREAUTH_KEYS, json={"role": "worker", "tags": ["gpu", "worker"]}, headers=controller.admin
    )
    assert r.status_code == 201 and r.json()["tags"] == ["gpu", "worker"]
    gpu_key = r.json()["key"]
    gpu = await controller.enroll(key=gpu_key)
    scheduler = await controller.enroll(key=await controller.new_key(tags=["scheduler"]))
    plain = await controller.enroll(key=await controller.new_key(role="worker"))
    assert (await info(controller, gpu))["tags"] == ["gpu", "worker"]
    assert (await info(controller, plain))["tags"] == ["worker"]  # no tags on the key: its role
    listed = (await controller.client.get(api.PREAUTH_KEYS, headers=controller.admin)).json()
    assert [k["tags"] for k in listed] == [["gpu", "worker"], ["scheduler"], None]

    r = await controller.client.put(api.POLICY, json={"text": POLICY}, headers=controller.admin)
    assert r.status_code == 200
    assert await peers(controller, scheduler) == [gpu.node_id]
    assert await peers(controller, plain) == []

    gpu_serial = await serial(controller, gpu)
    done = await tag(controller, plain, ["gpu", "spare"])
    assert done["status"] == 200 and done["tags"] == ["gpu", "spare"]
    assert await peers(controller, scheduler) == [gpu.node_id, plain.node_id]
    assert await peers(controller, plain) == [scheduler.node_id]
    assert await serial(controller, gpu) == gpu_serial  # its peers did not change: neither did its map

    back = await tag(controller, plain, None)
    assert back["tags"] == ["worker"] and await peers(controller, plain) == []
    assert (await tag(controller, plain, []))["tags"] == []

    again = controller.new_host(gpu.hostname)
    again.identity = gpu.identity  # the same host, enrolling again with another key
    await tag(controller, gpu, ["gpu"])
    back_again = await controller.enroll(again, key=await controller.new_key(tags=["scheduler"]))
    assert back_again.node_id == gpu.node_id
    assert (await info(controller, back_again))["tags"] == ["gpu"]
    await controller.restart()
    assert (await info(controller, back_again))["tags"] == ["gpu"]

    audit = (
        await controller.client.get(api.AUDIT, params={"action": "node.tag"}, headers=controller.admin)
    ).json()
    assert [(e["node_id"], e["detail"]) for e in audit] == [
        (plain.node_id, "tags gpu, spare (were its role)"),
        (plain.node_id, "tags its role (were gpu, spare)"),
        (plain.node_id, "tags none (were its role)"),
        (gpu.node_id, "tags gpu (were gpu, worker)"),
    ]
    created = (
        await controller.client.get(api.AUDIT, params={"action": "preauth.create"}, headers=controller.admin)
    ).json()
    assert created[0]["detail"].startswith("pre-auth key 1: role worker, tags gpu, worker, single-use")
    assert gpu_key not in str(created)


async def test_bad_tags_are_refused_and_change_nothing(controller: ControllerHarness):
    host = await controller.enroll(key=await controller.new_key(tags=["gpu"]))
    for body, detail in (
        ({"tags": ["GPU!"]}, "tags.0: 'GPU!': a tag is 1-32 of a-z"),
        ({"tags": [f"t{i}" for i in range(17)]}, "tags: List should have at most 16 items"),
        ({}, "tags: Field required"),
    ):
        r = await controller.client.put(
            f"{api.NODES}/{host.node_id}/tags", json=body, headers=controller.admin
        )
        assert r.status_code == 422 and r.json()["detail"].startswith(detail), r.text
    r = await controller.client.put(f"{api.NODES}/999/tags", json={"tags": []}, headers=controller.admin)
    assert r.status_code == 404 and r.json()["detail"] == "no node 999"
    r = await controller.client.put(f"{api.NODES}/{host.node_id}/tags", json={"tags": []}, headers=host.auth)
    assert r.status_code == 403
    r = await controller.client.post(api.PREAUTH_KEYS, json={"tags": ["no spaces"]}, headers=controller.admin)
    assert r.status_code == 422
    assert (await info(controller, host))["tags"] == ["gpu"]
