"""Link state across replicas: agents spread over the replicas (each starts at a random one), so the two
ends of a link often report to different replicas. A link that went bad must still come back when both
ends say it works again (issue 8.6: relays must not stick).

KNOWN BUG (strict xfail: remove the mark with the fix): each replica keeps the ends' link samples in
its own memory (controller.topology `LinkState.samples`; only weight and down_since reach the store).
With the ends on different replicas neither replica ever holds both ends' fresh reports, so "one end
alone can only raise a weight" keeps a raised weight up and "both ends must see it working" keeps a
down link down: the pair stays relayed for good. The same reports sent to one replica pass. The fix
shares each end's latest sample of a contested link (down, or above what this end measures) through
the store, as the link records are.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import DEADLINE_S, Host, Replica, eventually
from wire import api
from wire.models import NetMap

pytestmark = pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="link samples are per replica: a link whose ends use different replicas never heals",
)


def healthy(peer: Host, rtt: float) -> dict[str, Any]:
    return {"peer_id": peer.node_id, "rtt_ms": rtt, "loss": 0.0, "handshake_age_s": 2}


async def next_hop(replica: Replica, source: Host, target: Host) -> int | None:
    netmap = await replica.netmap(source)
    assert isinstance(netmap, NetMap)
    return next(r.via for r in netmap.routes if r.destination == target.node_id)


async def test_a_slow_link_whose_ends_report_to_different_replicas_goes_back_to_direct(replicas):
    _pg, _url, (a, b) = replicas
    clock = a.clock
    h1, h2, h3 = [await a.enroll() for _ in range(3)]
    await eventually("replica b to know every node", lambda: _knows(b, 3), DEADLINE_S)

    async def round_(rtt_12: float) -> None:
        # h1 and h3 talk to replica a, h2 to replica b
        await a.report(h1, healthy(h2, rtt_12), healthy(h3, 1.0))
        await b.report(h2, healthy(h1, rtt_12), healthy(h3, 1.0))
        await a.report(h3, healthy(h1, 1.0), healthy(h2, 1.0))
        clock.advance(2)

    for _ in range(4):
        await round_(80.0)  # `lab delay h1 h2 80ms`
    for replica in (a, b):
        await eventually(
            f"replica {replica.name} to route h1 to h2 through h3",
            lambda r=replica: _hop_is(r, h1, h2, h3.node_id),
            DEADLINE_S,
        )
    for _ in range(6):
        await round_(1.0)  # healed
    for replica in (a, b):
        await eventually(
            f"replica {replica.name} to route h1 to h2 direct again",
            lambda r=replica: _hop_is(r, h1, h2, h2.node_id),
            DEADLINE_S,
        )


async def _knows(replica: Replica, nodes: int) -> bool:
    r = await replica.client.get(api.NODES, headers=replica.admin)
    return r.status_code == 200 and len(r.json()) == nodes


async def _hop_is(replica: Replica, source: Host, target: Host, hop: int) -> bool:
    return await next_hop(replica, source, target) == hop
