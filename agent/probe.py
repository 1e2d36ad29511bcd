"""Link probes: ICMP echo to peers' tunnel addresses, in asyncio, without a subprocess.

One `probe()` round sends `count` echo requests to every target, `interval_s` apart, and waits until
every reply is in or `timeout_s` after the last request. A target's result is how many replies came
back and their median round-trip time.

Rules:
- The agent runs as root, so it opens a raw ICMP socket; where that is refused it falls back to the
  unprivileged datagram ICMP socket (Linux `ping_group_range`). Neither is found: the round reports
  every probe lost and says why once, it never raises.
- Replies are matched by source address, identifier and sequence number; anything else on the raw
  socket (other programs' pings, echo requests to us) is ignored.
- A send that fails (no route) counts as a lost probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import struct
import time
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Protocol

from agent.links import ProbeResult
from wire.models import IPAddress

ECHO_REQUEST = {4: 8, 6: 128}
ECHO_REPLY = {4: 0, 6: 129}
PAYLOAD_MAGIC = b"wgmesh-probe"


class Prober(Protocol):
    async def probe(self, targets: Sequence[IPAddress]) -> dict[IPAddress, ProbeResult]: ...


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(version: int, ident: int, seq: int) -> bytes:
    payload = PAYLOAD_MAGIC + struct.pack("!H", seq)
    header = struct.pack("!BBHHH", ECHO_REQUEST[version], 0, 0, ident, seq)
    if version == 6:
        return header + payload  # the kernel fills in the ICMPv6 checksum (it covers a pseudo-header)
    csum = checksum(header + payload)
    return struct.pack("!BBHHH", ECHO_REQUEST[version], 0, csum, ident, seq) + payload


def parse_echo_reply(version: int, packet: bytes, raw: bool) -> tuple[int, int] | None:
    """(identifier, sequence) of an echo reply, or None when `packet` is anything else.
    A raw IPv4 socket delivers the IP header too; IPv6 and datagram sockets do not."""
    if version == 4 and raw:
        if len(packet) < 20:
            return None
        packet = packet[(packet[0] & 0x0F) * 4 :]
    if len(packet) < 8:
        return None
    kind, _code, _csum, ident, seq = struct.unpack("!BBHHH", packet[:8])
    if kind != ECHO_REPLY[version]:
        return None
    return ident, seq


class _Socket:
    def __init__(self, sock: socket.socket, raw: bool, version: int) -> None:
        self.sock = sock
        self.raw = raw
        self.version = version


def _open(version: int) -> _Socket:
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    proto = socket.IPPROTO_ICMP if version == 4 else socket.IPPROTO_ICMPV6
    try:
        sock = socket.socket(family, socket.SOCK_RAW, proto)
        raw = True
    except PermissionError:
        sock = socket.socket(family, socket.SOCK_DGRAM, proto)
        raw = False
    sock.setblocking(False)
    return _Socket(sock, raw, version)


class IcmpProber:
    """Echo probes over real sockets in the caller's network namespace."""

    def __init__(self, count: int = 3, interval_s: float = 0.2, timeout_s: float = 1.0) -> None:
        if count < 1 or interval_s < 0 or timeout_s <= 0:
            raise ValueError("probe needs count >= 1, interval_s >= 0 and timeout_s > 0")
        self.count = count
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.last_error: str | None = None  # why the last round could not probe at all

    async def probe(self, targets: Sequence[IPAddress]) -> dict[IPAddress, ProbeResult]:
        targets = list(dict.fromkeys(ip_address(t) for t in targets))
        if not targets:
            return {}
        sockets: dict[int, _Socket] = {}
        self.last_error = None
        try:
            for version in sorted({t.version for t in targets}):
                try:
                    sockets[version] = _open(version)
                except OSError as e:
                    kind = "ICMP" if version == 4 else "ICMPv6"
                    self.last_error = f"cannot open an {kind} socket: {e.strerror}"
            return await self._round(targets, sockets)
        finally:
            for s in sockets.values():
                s.sock.close()

    async def _round(
        self, targets: list[IPv4Address | IPv6Address], sockets: dict[int, _Socket]
    ) -> dict[IPAddress, ProbeResult]:
        loop = asyncio.get_running_loop()
        ident = (os.getpid() ^ int.from_bytes(os.urandom(2), "big")) & 0xFFFF
        sent: dict[tuple[str, int], float] = {}  # (address, seq) -> monotonic send time
        target_of_seq: dict[int, IPv4Address | IPv6Address] = {}
        rtts: dict[IPv4Address | IPv6Address, list[float]] = {t: [] for t in targets}
        sent_count = dict.fromkeys(targets, 0)
        all_in = asyncio.Event()
        done_sending = asyncio.Event()

        def on_reply(s: _Socket, packet: bytes, source: str) -> None:
            parsed = parse_echo_reply(s.version, packet, s.raw)
            if parsed is None:
                return
            rid, seq = parsed
            # a datagram ICMP socket rewrites the identifier to its own and filters replies itself
            if s.raw and rid != ident:
                return
            target = target_of_seq.get(seq)
            if target is None or ip_address(source.split("%")[0]) != target:
                return
            start = sent.pop((str(target), seq), None)
            if start is None:
                return  # a duplicate
            rtts[target].append((time.monotonic() - start) * 1000.0)
            if not sent and done_sending.is_set():
                all_in.set()

        async def receive(s: _Socket) -> None:
            while True:
                try:
                    packet, addr = await loop.sock_recvfrom(s.sock, 2048)
                except OSError:
                    return
                on_reply(s, packet, addr[0])

        receivers = [asyncio.create_task(receive(s)) for s in sockets.values()]
        try:
            seq = 0
            for round_no in range(self.count):
                if round_no:
                    await asyncio.sleep(self.interval_s)
                for target in targets:
                    seq = (seq + 1) & 0xFFFF
                    s = sockets.get(target.version)
                    sent_count[target] += 1
                    if s is None:
                        continue
                    target_of_seq[seq] = target
                    sent[(str(target), seq)] = time.monotonic()
                    try:
                        await loop.sock_sendto(s.sock, echo_request(s.version, ident, seq), (str(target), 0))
                    except OSError:
                        sent.pop((str(target), seq), None)  # no route / unreachable: lost
            done_sending.set()
            if not sent:
                all_in.set()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that arrives
            # as the wait ends, and the cancelled task runs on
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timeout_s):
                    await all_in.wait()
        finally:
            for task in receivers:
                task.cancel()
            await asyncio.gather(*receivers, return_exceptions=True)
        return {
            t: ProbeResult(
                sent=sent_count[t],
                received=len(rtts[t]),
                rtt_ms=statistics.median(rtts[t]) if rtts[t] else None,
            )
            for t in targets
        }
