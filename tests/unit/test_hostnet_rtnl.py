"""Route netlink as agent/hostnet/rtnl.py speaks it: requests encoded as the kernel reads them
(linux/rtnetlink.h layouts, attributes padded to 4 bytes) and answers decoded from bytes laid out as the
kernel sends them (built here field by field; tests/netns/test_hostnet.py talks to a real kernel)."""

from __future__ import annotations

import socket
import struct
from ipaddress import ip_address

import pytest

from agent.hostnet import rtnl


def header(kind: int, flags: int, sequence: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, flags, sequence, 0) + body


def test_a_route_request_carries_destination_interface_and_table():
    body = rtnl.rtmsg(ip_address("198.19.11.0"), 24, oif=7, table=254, protocol=87, scope=253)
    family, dst_len, src_len, tos, table, protocol, scope, kind, flags = struct.unpack_from("=8BI", body)
    assert (family, dst_len, src_len, tos, table, protocol, scope, kind, flags) == (
        socket.AF_INET, 24, 0, 0, 254, 87, 253, rtnl.RTN_UNICAST, 0
    )  # fmt: skip
    assert rtnl.attrs(body[12:]) == {
        rtnl.RTA_DST: bytes([198, 19, 11, 0]),
        rtnl.RTA_OIF: struct.pack("=I", 7),
        rtnl.RTA_TABLE: struct.pack("=I", 254),
    }


def test_attributes_are_padded_to_four_bytes_and_names_end_with_nul():
    name = rtnl.text(rtnl.IFLA_IFNAME, "wg0")
    assert name == struct.pack("=HH", 8, rtnl.IFLA_IFNAME) + b"wg0\0"
    odd = rtnl.text(rtnl.IFLA_IFNAME, "wg10")
    assert len(odd) == 12 and struct.unpack_from("=H", odd)[0] == 9  # length without the padding
    nested = rtnl.attr(rtnl.IFLA_LINKINFO, rtnl.text(rtnl.IFLA_INFO_KIND, "wireguard"))
    assert rtnl.attrs(rtnl.attrs(nested)[rtnl.IFLA_LINKINFO]) == {rtnl.IFLA_INFO_KIND: b"wireguard\0"}


def test_an_address_request_names_the_address_as_local_and_address():
    body = rtnl.ifaddr(ip_address("fd00::1"), 64, 3)
    assert struct.unpack_from("=BBBBI", body) == (socket.AF_INET6, 64, 0, 0, 3)
    packed = ip_address("fd00::1").packed
    assert rtnl.attrs(body[8:]) == {rtnl.IFA_LOCAL: packed, rtnl.IFA_ADDRESS: packed}


def test_a_link_answer_gives_name_mtu_and_state():
    body = struct.pack("=BxHiII", 0, 65534, 9, 0x1 | 0x40, 0) + rtnl.text(rtnl.IFLA_IFNAME, "wg0")
    body += rtnl.u32(rtnl.IFLA_MTU, 1420) + rtnl.attr(0x8000 | 26, b"\0" * 8)  # a nested attribute kept
    assert rtnl.parse_link(body) == rtnl.Link(9, "wg0", 1420, True)


def test_a_route_answer_without_a_destination_is_the_default_route():
    body = struct.pack("=8BI", socket.AF_INET6, 0, 0, 0, 254, 87, 0, 1, 0) + rtnl.u32(rtnl.RTA_OIF, 4)
    route = rtnl.parse_route(body)
    assert route == rtnl.KernelRoute(socket.AF_INET6, None, 0, 254, 87, 0, 4)


def test_a_table_above_255_comes_from_its_attribute():
    body = struct.pack("=8BI", socket.AF_INET, 32, 0, 0, 252, 87, 253, 1, 0)
    body += rtnl.attr(rtnl.RTA_DST, bytes([10, 0, 0, 1])) + rtnl.u32(rtnl.RTA_TABLE, 1000)
    assert rtnl.parse_route(body).table == 1000


def test_one_datagram_holds_several_messages_each_aligned():
    first = header(rtnl.RTM_NEWADDR, rtnl.NLM_F_MULTI, 5, b"\1\2\3")  # 19 bytes: padded to 20
    second = header(rtnl.NLMSG_DONE, rtnl.NLM_F_MULTI, 5, struct.pack("=i", 0))
    found = list(rtnl.messages(first + b"\0" + second))
    assert [(kind, seq, body) for kind, _, seq, body in found] == [
        (rtnl.RTM_NEWADDR, 5, b"\1\2\3"),
        (rtnl.NLMSG_DONE, 5, struct.pack("=i", 0)),
    ]


def test_a_message_shorter_than_its_header_is_refused():
    with pytest.raises(ValueError, match="length 4"):
        list(rtnl.messages(struct.pack("=IHHII", 4, 0, 0, 0, 0)))
