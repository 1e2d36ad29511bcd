"""ICMP echo packets the prober sends and the replies it accepts (the socket round is in component tests)."""

from __future__ import annotations

import struct

import pytest

from agent.links import ProbeResult
from agent.probe import checksum, echo_request, parse_echo_reply


def test_checksum_of_a_packet_with_its_checksum_is_zero():
    packet = echo_request(4, ident=0x1234, seq=7)
    assert checksum(packet) == 0
    assert packet[0] == 8 and struct.unpack("!HH", packet[4:8]) == (0x1234, 7)


def test_icmpv6_request_leaves_the_checksum_to_the_kernel():
    packet = echo_request(6, ident=1, seq=2)
    assert packet[0] == 128 and packet[2:4] == b"\0\0"


def reply_of(request: bytes, version: int) -> bytes:
    kind = 0 if version == 4 else 129
    return bytes([kind]) + request[1:]


def test_a_raw_ipv4_reply_is_read_past_its_ip_header():
    ip_header = bytes([0x45]) + bytes(19)
    assert parse_echo_reply(4, ip_header + reply_of(echo_request(4, 9, 3), 4), raw=True) == (9, 3)
    assert parse_echo_reply(4, reply_of(echo_request(4, 9, 3), 4), raw=False) == (9, 3)
    assert parse_echo_reply(6, reply_of(echo_request(6, 9, 4), 6), raw=True) == (9, 4)


@pytest.mark.parametrize(
    "packet", [b"", b"\x45" + bytes(10), bytes([0x45]) + bytes(19) + echo_request(4, 1, 1)]
)
def test_anything_but_an_echo_reply_is_ignored(packet):
    assert parse_echo_reply(4, packet, raw=True) is None


def test_loss_is_the_fraction_of_probes_without_reply():
    assert ProbeResult(sent=4, received=3, rtt_ms=1.0).loss == 0.25
    assert ProbeResult(sent=0, received=0, rtt_ms=None).loss == 1.0
