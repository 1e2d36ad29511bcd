"""Route netlink (rtnetlink) spoken directly: the few requests the host network needs (links, addresses,
routes of one interface) encoded and decoded with `struct`, over one NETLINK_ROUTE socket.

The agent used pyroute2 for this; pyroute2 is a library for all of netlink and costs the resident agent
about 11 MiB for the handful of messages below. pyroute2 stays where only it will do: the kernel
backend's WireGuard generic netlink family (agent/backends/kernel.py).

Rules:
- `Rtnl(netns)` opens its socket inside network namespace `netns` (a name in /run/netns) when given:
  a helper thread enters the namespace, opens the socket and ends, so no thread of ours ever stays in
  another namespace; a missing namespace is FileNotFoundError, never created.
- Every request asks for an acknowledgement; the kernel's refusal is `NetlinkError` with its errno.
- Decoding returns small frozen dataclasses (`Link`, `Address`, `KernelRoute`); nothing else leaves here.
- Synchronous and blocking, like pyroute2's `IPRoute`: asyncio callers use a worker thread.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

# message types (linux/rtnetlink.h, linux/netlink.h)
NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
# flags
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
# attributes
IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO, IFLA_INFO_KIND = 3, 4, 18, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_TABLE = 1, 4, 15
RTN_UNICAST = 1
IFF_UP = 0x1
CLONE_NEWNET = 0x40000000

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_IFINFOMSG = struct.Struct("=BxHiII")  # family, device type, index, flags, change mask
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst len, src len, tos, table, protocol, scope, type, flags
_RTATTR = struct.Struct("=HH")  # length, type
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}


class NetlinkError(OSError):
    """The kernel refused a request: `errno` says why."""

    def __init__(self, code: int) -> None:
        super().__init__(code, os.strerror(code))
        self.code = code


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    mtu: int
    up: bool


@dataclass(frozen=True)
class Address:
    index: int
    address: IPv4Address | IPv6Address
    prefixlen: int


@dataclass(frozen=True)
class KernelRoute:
    """A route as the kernel lists it (`oif` 0: none, e.g. a multipath or blackhole route)."""

    family: int
    dst: IPv4Address | IPv6Address | None  # None: the default route
    dst_len: int
    table: int
    protocol: int
    scope: int
    oif: int


# --- encoding ----------------------------------------------------------------------------------------


def attr(kind: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    raw = _RTATTR.pack(_RTATTR.size + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def text(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)


def ifaddr(address: IPv4Address | IPv6Address, prefixlen: int, index: int) -> bytes:
    packed = address.packed
    return _IFADDRMSG.pack(_FAMILY[address.version], prefixlen, 0, 0, index) + (
        attr(IFA_LOCAL, packed) + attr(IFA_ADDRESS, packed)
    )


def rtmsg(
    dst: IPv4Address | IPv6Address, dst_len: int, *, oif: int, table: int, protocol: int, scope: int
) -> bytes:
    head = _RTMSG.pack(_FAMILY[dst.version], dst_len, 0, 0, min(table, 255), protocol, scope, RTN_UNICAST, 0)
    return head + attr(RTA_DST, dst.packed) + u32(RTA_OIF, oif) + u32(RTA_TABLE, table)


def message(kind: int, flags: int, sequence: int, body: bytes) -> bytes:
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, sequence, 0) + body


# --- decoding ----------------------------------------------------------------------------------------


def messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, sequence, body) of every message in one datagram."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, flags, sequence, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            raise ValueError(f"netlink message of length {length}")
        yield kind, flags, sequence, data[offset + _NLMSGHDR.size : offset + length]
        offset += (length + 3) & ~3


def attrs(data: bytes) -> dict[int, bytes]:
    """Attribute type (without the nested/byte-order bits) -> payload; the last of a repeated type."""
    found: dict[int, bytes] = {}
    offset = 0
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size:
            break
        found[kind & 0x3FFF] = data[offset + _RTATTR.size : offset + length]
        offset += (length + 3) & ~3
    return found


def _u32(raw: bytes | None) -> int | None:
    return None if raw is None else int(struct.unpack_from("=I", raw)[0])


def parse_link(body: bytes) -> Link:
    _, _, index, flags, _ = _IFINFOMSG.unpack_from(body)
    found = attrs(body[_IFINFOMSG.size :])
    name = found.get(IFLA_IFNAME, b"").split(b"\0", 1)[0].decode(errors="replace")
    return Link(index, name, _u32(found.get(IFLA_MTU)) or 0, bool(flags & IFF_UP))


def parse_address(body: bytes) -> Address:
    _, prefixlen, _, _, index = _IFADDRMSG.unpack_from(body)
    found = attrs(body[_IFADDRMSG.size :])
    raw = found.get(IFA_LOCAL) or found[IFA_ADDRESS]
    return Address(index, ip_address(raw), prefixlen)


def parse_route(body: bytes) -> KernelRoute:
    family, dst_len, _, _, table, protocol, scope, _, _ = _RTMSG.unpack_from(body)
    found = attrs(body[_RTMSG.size :])
    dst = found.get(RTA_DST)
    return KernelRoute(
        family,
        ip_address(dst) if dst is not None else None,
        dst_len,
        _u32(found.get(RTA_TABLE)) or table,
        protocol,
        scope,
        _u32(found.get(RTA_OIF)) or 0,
    )


# --- the socket --------------------------------------------------------------------------------------


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)  # Python 3.12+
    if setns is not None:
        setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _socket_in(netns: str) -> socket.socket:
    """A NETLINK_ROUTE socket of namespace `netns`, opened by a thread that enters it and then ends."""
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)  # FileNotFoundError: no namespace
    result: list[socket.socket | BaseException] = []

    def enter_and_open() -> None:
        try:
            _setns(fd)
            result.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE))
        except BaseException as e:  # handed to the caller's thread
            result.append(e)

    try:
        thread = threading.Thread(target=enter_and_open, name=f"rtnl-{netns}")
        thread.start()
        thread.join()
    finally:
        os.close(fd)
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


class Rtnl:
    """One NETLINK_ROUTE socket (`netns` None: the caller's own namespace); a context manager."""

    def __init__(self, netns: str | None = None) -> None:
        if netns is None:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        else:
            self._sock = _socket_in(netns)
        self._sock.bind((0, 0))
        self._sequence = 0

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def request(self, kind: int, body: bytes, flags: int = 0) -> list[tuple[int, bytes]]:
        """Send one request and collect its answer: (type, body) of every message up to the final
        acknowledgement or NLMSG_DONE. NetlinkError when the kernel refuses."""
        self._sequence += 1
        sequence = self._sequence
        self._sock.send(message(kind, NLM_F_REQUEST | NLM_F_ACK | flags, sequence, body))
        answer: list[tuple[int, bytes]] = []
        while True:
            data = self._sock.recv(1 << 16)
            for got, _, seq, payload in messages(data):
                if seq != sequence:
                    continue  # a late answer to an earlier request
                if got == NLMSG_ERROR:
                    code = -int(struct.unpack_from("=i", payload)[0])
                    if code:
                        raise NetlinkError(code)
                    return answer
                if got == NLMSG_DONE:
                    return answer
                answer.append((got, payload))

    # --- what the host network asks --------------------------------------------------------------------

    def link(self, name: str) -> Link | None:
        """The link named `name`, or None when there is none."""
        try:
            found = self.request(RTM_GETLINK, ifinfo() + text(IFLA_IFNAME, name))
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return None
            raise
        links = [parse_link(body) for kind, body in found if kind == RTM_NEWLINK]
        return links[0] if links else None

    def set_mtu(self, index: int, mtu: int) -> None:
        self.request(RTM_NEWLINK, ifinfo(index) + u32(IFLA_MTU, mtu))

    def set_up(self, index: int) -> None:
        self.request(RTM_NEWLINK, ifinfo(index, IFF_UP, IFF_UP))

    def add_link(self, name: str, kind: str, mtu: int) -> None:
        """Create a link of `kind` (fails with EEXIST when `name` exists)."""
        info = attr(IFLA_LINKINFO, text(IFLA_INFO_KIND, kind))
        body = ifinfo() + text(IFLA_IFNAME, name) + u32(IFLA_MTU, mtu) + info
        self.request(RTM_NEWLINK, body, NLM_F_CREATE | NLM_F_EXCL)

    def delete_link(self, name: str) -> None:
        self.request(RTM_DELLINK, ifinfo() + text(IFLA_IFNAME, name))

    def addresses(self, index: int) -> list[Address]:
        found = self.request(RTM_GETADDR, _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0), NLM_F_DUMP)
        listed = (parse_address(body) for kind, body in found if kind == RTM_NEWADDR)
        return [a for a in listed if a.index == index]

    def replace_address(self, index: int, address: IPv4Address | IPv6Address, prefixlen: int) -> None:
        self.request(RTM_NEWADDR, ifaddr(address, prefixlen, index), NLM_F_CREATE | NLM_F_REPLACE)

    def delete_address(self, index: int, address: IPv4Address | IPv6Address, prefixlen: int) -> None:
        self.request(RTM_DELADDR, ifaddr(address, prefixlen, index))

    def routes(self, oif: int) -> list[KernelRoute]:
        """The IPv4 and IPv6 routes leaving through link `oif`, in every table."""
        found: list[KernelRoute] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            dump = self.request(RTM_GETROUTE, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0), NLM_F_DUMP)
            found += (parse_route(body) for kind, body in dump if kind == RTM_NEWROUTE)
        return [r for r in found if r.oif == oif]

    def replace_route(
        self, dst: IPv4Address | IPv6Address, dst_len: int, *, oif: int, table: int, protocol: int, scope: int
    ) -> None:
        body = rtmsg(dst, dst_len, oif=oif, table=table, protocol=protocol, scope=scope)
        self.request(RTM_NEWROUTE, body, NLM_F_CREATE | NLM_F_REPLACE)

    def delete_route(
        self, dst: IPv4Address | IPv6Address, dst_len: int, *, oif: int, table: int, protocol: int, scope: int
    ) -> None:
        self.request(RTM_DELROUTE, rtmsg(dst, dst_len, oif=oif, table=table, protocol=protocol, scope=scope))
