"""Leader election over real nodes on loopback: one leader everyone agrees on, a new one when it dies."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address

from keys.types import IdentityPrivateKey
from p2p import LeaderElection, Node, NodeConfig
from p2p.core.directory import Directory, DirectoryEntry
from p2p.core.election import ElectionTiming
from tests.support import STOP_S, eventually, finished, free_port

FAST = NodeConfig(heartbeat_interval=0.1, dead_after=0.6, backoff_initial=0.05, backoff_max=0.3)
TIMING = ElectionTiming(election_timeout_min=0.4, election_timeout_max=0.8, heartbeat_interval=0.1)


async def test_three_nodes_agree_on_a_leader_and_replace_it_when_it_dies():
    keys = {i: IdentityPrivateKey.generate() for i in (1, 2, 3)}
    entries = {
        i: DirectoryEntry(
            i,
            f"n{i}",
            IPv4Address(f"127.0.0.{40 + i}"),
            "worker",
            k.public_key(),
            free_port(f"127.0.0.{40 + i}"),
        )
        for i, k in keys.items()
    }
    nodes = {
        i: Node(Directory.of(entries[i], [e for j, e in entries.items() if j != i]), keys[i], config=FAST)
        for i in keys
    }
    elections = {i: LeaderElection(node, timing=TIMING) for i, node in nodes.items()}
    try:
        for i in nodes:
            await nodes[i].start()
            elections[i].start()
        await eventually(
            "agreement on a leader",
            lambda: len({e.leader for e in elections.values()}) == 1 and elections[1].leader is not None,
        )
        leader = elections[1].leader
        assert sum(e.is_leader for e in elections.values()) == 1 and elections[leader].is_leader
        first_term = elections[leader].term

        await elections.pop(leader).close()
        await nodes.pop(leader).close()
        await eventually(
            "a new leader",
            lambda: (
                len({e.leader for e in elections.values()}) == 1
                and next(iter(elections.values())).leader not in (None, leader)
            ),
        )
        new = next(iter(elections.values())).leader
        assert new != leader and elections[new].is_leader and elections[new].term > first_term
        assert await elections[new].wait_leader(timeout=1) == new
    finally:
        for i, election in elections.items():
            await finished(asyncio.ensure_future(election.close()), f"node {i}'s election close", STOP_S)
        for i, node in nodes.items():
            await finished(asyncio.ensure_future(node.close()), f"node {i}'s close", STOP_S)
