"""Link state across replicas: agents spread over the replicas (each starts at a random one), so the two
ends of a link often report to different replicas. A link that went bad must still come back when both
ends say it works again (issue 8.6: relays must not stick), on either store.

Each replica holds the samples of the reports it took; an end's sample of a contested link (one this
replica cannot decide alone: it would lower the weight, or bring a down link back) is shared through
the store (controller.topology), so the replica the other end reports to decides on both. What stays
true across replicas: one end alone can only raise a weight, and noise shares (and changes) nothing.
"""

from __future__ import annotations

from typing import Any

from tests.support import DEADLINE_S, Host, Replica, eventually
from wire import api
from wire.models import NetMap


def healthy(peer: Host, rtt: float) -> dict[str, Any]:
    return {"peer_id": peer.node_id, "rtt_ms": rtt, "loss": 0.0, "handshake_age_s": 2}


def broken(peer: Host) -> dict[str, Any]:
    return {"peer_id": peer.node_id, "rtt_ms": None, "loss": 1.0, "handshake_age_s": 200}


async def next_hop(replica: Replica, source: Host, target: Host) -> int | None:
    netmap = await replica.netmap(source)
    assert isinstance(netmap, NetMap)
    return next(r.via for r in netmap.routes if r.destination == target.node_id)


async def three_hosts(a: Replica, b: Replica) -> tuple[Host, Host, Host]:
    h1, h2, h3 = [await a.enroll() for _ in range(3)]
    await eventually("replica b to know every node", lambda: _knows(b, 3), DEADLINE_S)
    return h1, h2, h3


async def routed(replicas: list[Replica], source: Host, target: Host, hop: Host, how: str) -> None:
    for replica in replicas:
        await eventually(
            f"replica {replica.name} to route {source.name} to {target.name} {how}",
            lambda r=replica: _hop_is(r, source, target, hop.node_id),
            DEADLINE_S,
        )


async def test_a_slow_link_whose_ends_report_to_different_replicas_goes_back_to_direct(store_replicas):
    a, b = store_replicas
    clock = a.clock
    h1, h2, h3 = await three_hosts(a, b)

    async def round_(rtt_12: float) -> None:
        # h1 and h3 talk to replica a, h2 to replica b
        await a.report(h1, healthy(h2, rtt_12), healthy(h3, 1.0))
        await b.report(h2, healthy(h1, rtt_12), healthy(h3, 1.0))
        await a.report(h3, healthy(h1, 1.0), healthy(h2, 1.0))
        clock.advance(2)

    for _ in range(4):
        await round_(80.0)  # `lab delay h1 h2 80ms`
    await routed([a, b], h1, h2, h3, "through h3")
    for _ in range(6):
        await round_(1.0)  # healed
    await routed([a, b], h1, h2, h2, "direct again")


async def test_a_down_link_whose_ends_report_to_different_replicas_comes_back(store_replicas):
    a, b = store_replicas
    clock = a.clock
    h1, h2, h3 = await three_hosts(a, b)

    async def round_(h1_sees: dict[str, Any], h2_sees: dict[str, Any]) -> None:
        await a.report(h1, h1_sees, healthy(h3, 1.0))
        await b.report(h2, h2_sees, healthy(h3, 1.0))
        await a.report(h3, healthy(h1, 1.0), healthy(h2, 1.0))
        clock.advance(3)

    await round_(broken(h2), broken(h1))  # `lab cut h1 h2`
    await routed([a, b], h1, h2, h3, "through h3")
    for _ in range(6):  # healed, past the hold-down: both ends answer probes over the direct path
        await round_(healthy(h2, 1.0), healthy(h1, 1.0))
    await routed([a, b], h1, h2, h2, "direct again")


async def test_one_end_on_another_replica_still_cannot_lower_a_weight_alone(store_replicas):
    a, b = store_replicas
    clock = a.clock
    h1, h2, h3 = await three_hosts(a, b)
    for _ in range(4):
        await a.report(h1, healthy(h2, 80.0), healthy(h3, 1.0))
        await b.report(h2, healthy(h1, 80.0), healthy(h3, 1.0))
        await a.report(h3, healthy(h1, 1.0), healthy(h2, 1.0))
        clock.advance(2)
    await routed([a, b], h1, h2, h3, "through h3")
    for _ in range(6):  # h1 claims the link is fast; h2, on the other replica, still sees 80 ms
        await a.report(h1, healthy(h2, 1.0), healthy(h3, 1.0))
        await b.report(h2, healthy(h1, 80.0), healthy(h3, 1.0))
        await a.report(h3, healthy(h1, 1.0), healthy(h2, 1.0))
        clock.advance(2)
    for replica in (a, b):  # caught up with everything written, and still relayed
        await eventually(
            f"replica {replica.name} to catch up", lambda r=replica: _caught_up(r, a, b), DEADLINE_S
        )
        assert await next_hop(replica, h1, h2) == h3.node_id


async def test_noise_on_links_whose_ends_use_different_replicas_makes_no_new_map(store_replicas):
    a, b = store_replicas
    clock = a.clock
    h1, h2, h3 = await three_hosts(a, b)
    # three measured links, then jitter inside the band (20%) on all of them
    for rtts in [(5.0, 5.0, 5.0), (5.0, 5.0, 5.0), (5.6, 4.4, 5.3), (4.3, 5.8, 4.6), (5.4, 4.5, 5.5)]:
        await a.report(h1, healthy(h2, rtts[0]), healthy(h3, rtts[1]))
        await b.report(h2, healthy(h1, rtts[0]), healthy(h3, rtts[2]))
        await a.report(h3, healthy(h1, rtts[1]), healthy(h2, rtts[2]))
        clock.advance(2)
        if rtts == (5.0, 5.0, 5.0):
            settled = a.app.state.plane.version
            serials = [await _serial(r, h) for r in (a, b) for h in (h1, h2, h3)]
    assert a.app.state.plane.version == settled  # nothing written: no sample shared, no link changed
    assert [await _serial(r, h) for r in (a, b) for h in (h1, h2, h3)] == serials


async def _serial(replica: Replica, host: Host) -> int:
    netmap = await replica.netmap(host)
    assert netmap is not None
    return netmap.serial


async def _caught_up(replica: Replica, *all_: Replica) -> bool:
    return replica.app.state.plane.version == max(r.app.state.plane.version for r in all_)


async def _knows(replica: Replica, nodes: int) -> bool:
    r = await replica.client.get(api.NODES, headers=replica.admin)
    return r.status_code == 200 and len(r.json()) == nodes


async def _hop_is(replica: Replica, source: Host, target: Host, hop: int) -> bool:
    return await next_hop(replica, source, target) == hop
