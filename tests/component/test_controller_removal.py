"""Removals last: a removed node's credential is answered 410 Gone (for good, also after a restart),
its keys are refused at enrollment whatever pre-auth key comes with them (a reusable one too), until an
admin allows them again; then it comes back as a new node."""

from __future__ import annotations

import dataclasses

from tests.support import ControllerHarness
from wire import api


async def test_a_removed_node_stays_out_until_an_admin_allows_it(controller: ControllerHarness):
    key = await controller.new_key(reusable=True)
    host = await controller.enroll(key=key)
    other = await controller.enroll(key=key)
    old_id, old_credential = host.node_id, host.credential
    r = await controller.client.delete(f"{api.NODES}/{old_id}", headers=controller.admin)
    assert r.status_code == 204

    # Its credential: 410, saying what happened and what can be done, on every node route.
    r = await controller.client.get(api.NETMAP, params={"since": 0}, headers=host.auth)
    assert r.status_code == 410 and "removed from the mesh" in r.json()["detail"]
    assert f"wgmesh nodes allow {old_id}" in r.json()["detail"]
    r = await controller.client.post(api.LINKS, json={"measurements": []}, headers=host.auth)
    assert r.status_code == 410
    # A credential that never existed is still 401.
    r = await controller.client.get(api.NETMAP, headers={"Authorization": "Bearer wgm_node_nonsense"})
    assert r.status_code == 401

    # The same keys through the reusable key: refused, nothing used up.
    r = await controller.enroll_raw(host, key)
    assert r.status_code == 403 and "removed from the mesh" in r.json()["detail"]
    assert f"wgmesh nodes allow {old_id}" in r.json()["detail"]
    # ...and a garbage pre-auth key learns nothing about the removal.
    r = await controller.enroll_raw(host, "wgm_preauth_garbage")
    assert r.status_code == 401 and "removed" not in r.json()["detail"]
    # A new WireGuard key with the old identity is refused too.
    fresh_wg = dataclasses.replace(host, wg=controller.new_host().wg)
    assert (await controller.enroll_raw(fresh_wg, key)).status_code == 403

    # Also after a restart.
    await controller.restart()
    r = await controller.client.get(api.NETMAP, params={"since": 0}, headers=host.auth)
    assert r.status_code == 410
    assert (await controller.enroll_raw(host, key)).status_code == 403
    listed = (await controller.client.get(api.REMOVED_NODES, headers=controller.admin)).json()
    assert [(n["node_id"], n["name"]) for n in listed] == [(old_id, host.name)]
    # Nodes cannot see or change the list.
    assert (await controller.client.get(api.REMOVED_NODES, headers=other.auth)).status_code == 403

    # Allowed again: it enrolls as a new node; its old credential stays unknown (401, no longer 410).
    r = await controller.client.delete(f"{api.REMOVED_NODES}/{old_id}", headers=controller.admin)
    assert r.status_code == 204
    r = await controller.client.delete(f"{api.REMOVED_NODES}/{old_id}", headers=controller.admin)
    assert r.status_code == 404
    back = await controller.enroll(host, key)
    assert back.node_id != old_id and back.credential != old_credential
    assert (await controller.netmap(back)) is not None
    r = await controller.client.get(api.NETMAP, headers={"Authorization": f"Bearer {old_credential}"})
    assert r.status_code == 401
    assert (await controller.client.get(api.REMOVED_NODES, headers=controller.admin)).json() == []
