"""Does one mesh member holding idle WebSocket connections keep another member out? Two p2p nodes on
loopback; an "attacker" address opens N idle connections to the victim (reopening them as they are
closed), and the legitimate peer sends requests meanwhile. Prints how many of its requests got an
answer and the victim's refusal counters.

    .venv/bin/python -m bench.p2p_gate [IDLE_CONNECTIONS]

RESULT p2p_gate idle=64 answered=K/N refused=R  (K/N: the legitimate peer's requests that got a reply)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from dataclasses import replace
from ipaddress import IPv4Address

from websockets.asyncio.client import connect

from keys.types import IdentityPrivateKey
from p2p import Message, Node, NodeConfig
from p2p.core.directory import Directory, DirectoryEntry

ATTACKER = "127.0.0.99"
REQUESTS = 10
CONFIG = NodeConfig(send_timeout=2.0)  # the defaults of a real mesh: 5 s handshakes, backoff to 10 s


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def hold_idle(url: str, n: int, stop: asyncio.Event) -> None:
    """Keep `n` idle connections from ATTACKER open, reopening each one the victim closes."""

    async def one() -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                async with connect(url, local_addr=(ATTACKER, 0), open_timeout=2, proxy=None) as ws:
                    await ws.wait_closed()
            await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def run(idle: int) -> tuple[int, dict[str, int]]:
    keys = {i: IdentityPrivateKey.generate() for i in (1, 2)}
    addresses = {i: f"127.0.0.{40 + i}" for i in (1, 2)}
    entries = {
        i: DirectoryEntry(i, f"n{i}", IPv4Address(a), "worker", keys[i].public_key(), free_port(a))
        for i, a in addresses.items()
    }
    directory = {i: Directory.of(entries[i], [entries[3 - i]]) for i in (1, 2)}
    victim = Node(directory[2], keys[2], config=CONFIG)  # the lower id dials: node 1 comes to node 2

    async def answer(message: Message) -> str:
        return "pong"

    victim.handle_any(answer)
    await victim.start()
    stop = asyncio.Event()
    holder = asyncio.create_task(hold_idle(entries[2].url(), idle, stop))
    await asyncio.sleep(1.0)  # the idle connections are in place before the peer comes
    peer = Node(directory[1], keys[1], config=replace(CONFIG))
    await peer.start()
    answered = 0
    for _ in range(REQUESTS):
        with contextlib.suppress(Exception):
            if await peer.request(2, "ping", None, timeout=2) == "pong":
                answered += 1
    stop.set()
    await holder
    counters = victim.counters.as_dict()
    await peer.close()
    await victim.close()
    refusals = {k: v for k, v in counters.items() if k.startswith(("refused", "displaced", "handshake"))}
    return answered, refusals


def main(argv: list[str]) -> int:
    idle = int(argv[0]) if argv else 64
    answered, refusals = asyncio.run(run(idle))
    print(f"legitimate peer: {answered}/{REQUESTS} requests answered; victim counters: {refusals}")
    refused = sum(v for k, v in refusals.items() if k != "handshake_failed")
    print(f"RESULT p2p_gate idle={idle} answered={answered}/{REQUESTS} refused={refused}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
