"""The agent's UDP endpoint for key rotation: `RotationNotice` and `RotationAck` datagrams on
ROTATION_PORT of the tunnel address.

Why a datagram, not the p2p layer: the rotating node must send every notice before it switches (a
switched device can no longer send on its sessions), so the notice has to leave in one packet with no
connection set-up and no answer awaited; each message carries its own Ed25519 signature, so it needs no
authenticated connection either. A datagram costs the rotation one packet per peer and nothing else,
which keeps the stall down to the peer's processing and one handshake.

The socket binds the tunnel address with IP_FREEBIND, so it can open before the address is on the
interface, and is bound to the WireGuard interface (SO_BINDTODEVICE): a notice can only ever leave
through the tunnel, never by a default route. Where the interface is not a real one (the fake backend)
the channel cannot open, and peers learn new keys from their maps only. Unreadable datagrams are
counted and dropped, never answered.
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
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)


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
        cls,
        ifname: str,
        address: IPv4Address | IPv6Address,
        port: int,
        on_message: Callable[[Message, str], None],
    ) -> RotationChannel:
        """OSError when the interface does not exist or the port is taken."""
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
            sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
