"""An admin sees the same whichever replica it asks, however far that replica had caught up by itself:
a node credential on an admin route is 403 on every replica (a node enrolled through another replica a
moment ago included), an unknown credential 401; the node list and the topology show what was written
through any replica before the read, and when any replica last saw each node."""

from __future__ import annotations

from typing import Any

from tests.support import DEADLINE_S, Replica, finished
from wire import api


async def behind(replica: Replica) -> None:
    """Stop the replica following the others: it catches up only when a request makes it."""
    replica.app.state.follower.stop()
    await finished(replica.task, f"replica {replica.name}'s follower", DEADLINE_S)


async def test_a_node_credential_on_an_admin_route_is_403_on_a_replica_that_has_not_seen_the_node(
    store_replicas,
):
    a, b = store_replicas
    await behind(b)
    host = await a.enroll()
    for replica in (a, b):
        r = await replica.client.get(api.NODES, headers=host.auth)
        assert r.status_code == 403 and "admin credential" in r.json()["detail"], (replica.name, r.text)
        unknown = await replica.client.get(api.NODES, headers={"Authorization": "Bearer wgm_node_nobody"})
        assert unknown.status_code == 401, (replica.name, unknown.text)


def healthy(peer_id: int, rtt: float) -> dict[str, Any]:
    return {"peer_id": peer_id, "rtt_ms": rtt, "loss": 0.0, "handshake_age_s": 2}


async def test_the_node_list_and_topology_of_a_replica_show_what_another_wrote(store_replicas):
    a, b = store_replicas
    await behind(b)
    h1, h2 = await a.enroll(), await a.enroll()
    await a.netmap(h1)  # h1 polls replica a...
    await a.app.state.plane.write_bookkeeping()  # ...which writes when it saw it
    for _ in range(2):
        await a.report(h1, healthy(h2.node_id, 40.0))
        await a.report(h2, healthy(h1.node_id, 40.0))
        a.clock.advance(2)
    listed = await b.client.get(api.NODES, headers=b.admin)
    assert listed.status_code == 200
    seen = {n["node_id"]: n["last_seen"] for n in listed.json()}
    assert set(seen) == {h1.node_id, h2.node_id} and seen[h1.node_id] is not None and seen[h2.node_id] is None
    shown = await b.client.get(f"{api.NODES}/{h2.node_id}", headers=b.admin)
    assert shown.status_code == 200 and shown.json()["name"] == h2.name
    topology = await b.client.get(api.TOPOLOGY, headers=b.admin)
    assert topology.status_code == 200
    edges = {(e["a"], e["b"]): e["weight"] for e in topology.json()["edges"]}
    assert edges == {(h1.node_id, h2.node_id): 40.0}, topology.text
