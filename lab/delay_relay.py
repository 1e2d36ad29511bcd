"""The lab's userspace link impairment: a UDP relay between two hosts' WireGuard ports.

    python -m lab.delay_relay --listen 198.18.0.1 --a 198.18.1.1:51820 --b 198.18.1.2:51820 \\
        --delay-ms 40 --loss 0.05 --lab-dir /run/wgmesh-lab/NAME

It binds two sockets on the underlay address, one standing for each end (see `lab/impairment.py` for how
the hosts' packets are steered to them), prints `ports A_PORT B_PORT` once both are bound, and then
forwards: what arrives on A's socket goes to B from B's socket, and back, each packet held `delay-ms`
and dropped with probability `loss`. Packets keep their order within a direction. Runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
from collections.abc import Callable, Sequence
from typing import cast

from wire.fields import parse_endpoint


class _Side(asyncio.DatagramProtocol):
    def __init__(self, relay: Relay, name: str) -> None:
        self.relay = relay
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.relay.forward(self.name, data)


class Relay:
    def __init__(
        self, a: tuple[str, int], b: tuple[str, int], delay_s: float, loss: float, rng: random.Random
    ) -> None:
        self.ends = {"a": a, "b": b}
        self.delay_s = delay_s
        self.loss = loss
        self.rng = rng
        self.sides: dict[str, _Side] = {}
        self.loop = asyncio.get_running_loop()

    def forward(self, arrived_on: str, data: bytes) -> None:
        to = "b" if arrived_on == "a" else "a"
        if self.loss and self.rng.random() < self.loss:
            return
        if self.delay_s:
            self.loop.call_later(self.delay_s, self._send, to, data)
        else:
            self._send(to, data)

    def _send(self, to: str, data: bytes) -> None:
        transport = self.sides[to].transport
        if transport is not None:
            transport.sendto(data, self.ends[to])


def _factory(side: _Side) -> Callable[[], _Side]:
    return lambda: side


async def serve(listen: str, a: tuple[str, int], b: tuple[str, int], delay_ms: float, loss: float) -> None:
    loop = asyncio.get_running_loop()
    relay = Relay(a, b, delay_ms / 1000.0, loss, random.Random())
    ports = []
    for name in ("a", "b"):
        side = _Side(relay, name)
        transport, _ = await loop.create_datagram_endpoint(_factory(side), local_addr=(listen, 0))
        relay.sides[name] = side
        ports.append(transport.get_extra_info("sockname")[1])
    print(f"ports {ports[0]} {ports[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.delay_relay")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--a", required=True, type=parse_endpoint)
    parser.add_argument("--b", required=True, type=parse_endpoint)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--lab-dir", help="the lab this relay belongs to (so `lab down` knows it is ours)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen, args.a, args.b, args.delay_ms, args.loss))
    return 0


if __name__ == "__main__":
    sys.exit(main())
