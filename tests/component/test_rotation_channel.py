"""The rotation channel on loopback: a datagram sent arrives as the typed message with its source; a
datagram that is not a rotation message is dropped and counted; a port in use is refused."""

from __future__ import annotations

import socket
from ipaddress import ip_address

import pytest

from agent.rotation_channel import RotationChannel
from keys.types import WireGuardPrivateKey
from tests.support import eventually
from wire.rotation import RotationAck


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_messages_arrive_typed_and_garbage_is_dropped() -> None:
    got: list[tuple[object, str]] = []
    port = free_udp_port()
    channel = await RotationChannel.open(ip_address("127.0.0.1"), port, lambda m, s: got.append((m, s)))
    try:
        ack = RotationAck(
            node_id=2, rotation_id=5, new_wg_public_key=WireGuardPrivateKey.generate().public_key()
        )
        channel.send(ack, "127.0.0.1", port)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b'{"kind": "nonsense"}', ("127.0.0.1", port))
        await eventually("the ack and the drop", lambda: got and channel.dropped >= 1, timeout=5)
        assert got == [(ack, "127.0.0.1")] and channel.dropped == 1
    finally:
        channel.close()


async def test_a_port_in_use_is_refused() -> None:
    port = free_udp_port()
    first = await RotationChannel.open(ip_address("127.0.0.1"), port, lambda m, s: None)
    try:
        with pytest.raises(OSError):
            await RotationChannel.open(ip_address("127.0.0.1"), port, lambda m, s: None)
    finally:
        first.close()
