"""The agent's UDP endpoint for key rotation: `RotationNotice` and `RotationAck` datagrams on
ROTATION_PORT, sent to a peer's underlay endpoint (the address its WireGuard packets come from).

Why the underlay, and why a datagram: the notice must leave AFTER the rotating node switched (a peer
that swapped earlier would drop the packets still in flight on the old sessions: measured, one packet
per direction in the lab), and a switched device can no longer send on its sessions: a notice over
the tunnel would wait, staged, for the very handshake it is meant to start. So it goes around the
tunnel, in one packet, with no connection set-up and no answer awaited; its Ed25519 signature (the
node's identity key, known to every peer from its map) authenticates it on any path, and replays are
harmless (a peer that holds the new key only acks). A peer the underlay cannot reach converges from
the controller's map instead. The p2p layer would add a connection set-up and a round trip to the
stall, and runs over the tunnel.

The socket listens on every address of the host's namespace. Unreadable datagrams are counted and
dropped, never answered.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from typing import cast

from pydantic import TypeAdapter, ValidationError

from wire.rotation import RotationAck, RotationNotice

Message = RotationNotice | RotationAck
_MESSAGE: TypeAdapter[Message] = TypeAdapter(Message)
MAX_DATAGRAM = 2048


def encode(message: Message) -> bytes:
    return message.model_dump_json().encode()


def decode(data: bytes) -> Message | None:
    if len(data) > MAX_DATAGRAM:
        return None
    try:
        return _MESSAGE.validate_json(data)
    except ValidationError:
        return None


class RotationChannel(asyncio.DatagramProtocol):
    """Receives rotation datagrams and hands each valid one to `on_message(message, source_ip)`."""

    def __init__(self, on_message: Callable[[Message, str], None]) -> None:
        self.on_message = on_message
        self.dropped = 0
        self._transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(
        cls, address: IPv4Address | IPv6Address, port: int, on_message: Callable[[Message, str], None]
    ) -> RotationChannel:
        """Listen on `address` (0.0.0.0: every address) and `port`; OSError when the port is taken."""
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((str(address), port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        _transport, protocol = await loop.create_datagram_endpoint(lambda: cls(on_message), sock=sock)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        message = decode(data)
        if message is None:
            self.dropped += 1
            return
        self.on_message(message, str(addr[0]))

    def error_received(self, exc: Exception) -> None:  # ICMP errors of earlier sends: nothing to do
        pass

    def send(self, message: Message, address: str, port: int) -> None:
        if self._transport is not None:
            self._transport.sendto(encode(message), (address, port))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
