"""One mesh member holding WebSocket connections open without finishing a handshake must not keep
other members out: the limit of unfinished handshakes is per source address, and a source with nothing
unfinished always gets through. (Before: 64 idle connections from one address filled the one shared
limit, and every other node's sends to that node failed.)"""

from __future__ import annotations

import asyncio
import contextlib

from websockets.asyncio.client import ClientConnection, connect

from p2p import NodeConfig
from tests.support import FAST, P2PHosts, eventually, stop_listener

ATTACKER = "127.0.0.99"  # another mesh member's address, not in anybody's way but the victim's


async def idle_connections(url: str, n: int, source: str) -> list[ClientConnection]:
    """`n` WebSocket connections from `source` that never send a hello; refused ones are dropped."""
    opened = []
    for _ in range(n):
        with contextlib.suppress(OSError):
            opened.append(await connect(url, local_addr=(source, 0), open_timeout=2, proxy=None))
    return opened


async def test_idle_connections_from_one_member_do_not_block_another(mesh_factory):
    mesh = mesh_factory(2)
    # long enough that the idle connections outlast the legitimate peer's whole attempt
    config = NodeConfig(**{**FAST.__dict__, "handshake_timeout": 30.0})
    victim = await mesh.start(2, config=config)  # the lower id dials: node 1 comes to it
    url = mesh.entries[2].url()
    idle = await idle_connections(url, 64, ATTACKER)
    try:
        await eventually(
            "the victim to see every idle connection",
            lambda: victim.counters.refused_busy_source + len(victim._inbound_handshakes) >= 64,
        )
        assert len(victim._inbound_handshakes) == config.max_handshakes_per_source
        assert victim.counters.refused_busy_source == 64 - config.max_handshakes_per_source
        assert victim.refused_sources == {ATTACKER: 64 - config.max_handshakes_per_source}
        peer = await mesh.start(1, config=config)
        assert await peer.request(2, "ping", None, timeout=5) == "n2 got ping"
    finally:
        await asyncio.gather(*(c.close() for c in idle), return_exceptions=True)


async def test_when_every_slot_is_held_a_newcomer_displaces_the_busiest_source(mesh_factory):
    mesh = mesh_factory(2)
    config = NodeConfig(
        **{
            **FAST.__dict__,
            "handshake_timeout": 30.0,
            "max_pending_handshakes": 8,
            "max_handshakes_per_source": 4,
        }
    )
    victim = await mesh.start(2, config=config)  # the lower id dials: node 1 comes to it
    url = mesh.entries[2].url()
    idle = [c for s in ("127.0.0.97", "127.0.0.98") for c in await idle_connections(url, 4, s)]
    try:
        await eventually("every slot held", lambda: len(victim._inbound_handshakes) == 8)
        peer = await mesh.start(1, config=config)
        assert await peer.request(2, "ping", None, timeout=5) == "n2 got ping"
        assert victim.counters.displaced_handshake == 1
    finally:
        await asyncio.gather(*(c.close() for c in idle), return_exceptions=True)


def line_with(proc, text: str) -> str:
    """The first line of `proc`'s output holding `text` ('' when the output ends first)."""
    for line in proc.stdout:
        if text in line:
            return line.rstrip("\n")
    return ""


async def test_p2p_listen_shows_its_refusal_counters(tmp_path):
    """`wgmesh p2p listen` as a user runs it: the refusals appear as a line naming the busy address."""
    hosts = P2PHosts(tmp_path)
    listener = hosts.listen(2)
    try:
        idle = await idle_connections(hosts.entries[2].url(), 6, ATTACKER)
        line = await asyncio.wait_for(asyncio.to_thread(line_with, listener, "handshakes refused"), 20)
        await asyncio.gather(*(c.close() for c in idle), return_exceptions=True)
    finally:
        stop_listener(listener)
    assert line == (
        "-- handshakes refused: 2 from busy addresses, 0 with every slot held; 0 displaced "
        f"(most refused: {ATTACKER} 2)"
    )
