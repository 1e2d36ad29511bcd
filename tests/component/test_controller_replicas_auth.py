"""What a caller is does not depend on which replica it asks, or on how far that replica has caught up:
a node credential on an admin route is 403 on every replica (a node enrolled through another replica a
moment ago included), an unknown credential 401."""

from __future__ import annotations

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
