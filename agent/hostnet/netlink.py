"""The host network through route netlink (agent/hostnet/rtnl.py): the addresses, MTU, link state and
routes of the WireGuard interface, and IP forwarding (`NetlinkHostNetwork`, an
agent.hostnet.base.HostNetwork).

Rules:
- Everything is declarative and idempotent: callers pass the whole desired state; what already matches
  is not touched, and each function returns one readable line per change it made (empty: nothing).
- Addresses: the interface carries exactly the desired ones; others on THAT interface are removed
  (IPv6 link-local addresses, which the kernel manages, are left alone).
- Routes: every desired destination is routed into the interface (main table, `replace`), marked with
  protocol `ROUTE_PROTO`; routes on that interface with our protocol that are no longer desired are
  removed. Routes of other protocols (the kernel's connected routes, an operator's static routes) are
  never removed.
- Forwarding is switched per interface (`net.ipv4.conf.IF.forwarding`, `net.ipv6.conf.IF.forwarding`):
  a relay forwards between its peers, which all arrive on and leave through the WireGuard interface;
  the host's other interfaces keep their setting.
- `netns=None` works in the caller's own namespace (the daemon, which runs inside its host); a name
  works on that namespace from outside (tests, the lab). A missing namespace is an error, never
  silently created.
- Synchronous (blocking socket calls), so the daemon calls `NetlinkHostNetwork` from a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network, ip_interface, ip_network
from pathlib import Path

from agent.device import IPNetwork, normalize_ips
from agent.hostnet.base import HostConfig, IPInterface
from agent.hostnet.rtnl import Link, NetlinkError, Rtnl

DEFAULT_MTU = 1420  # 1500 minus WireGuard's worst-case (IPv6) overhead of 80 bytes
ROUTE_PROTO = 87  # marks the routes wgmesh owns (not in /etc/iproute2/rt_protos)
MAIN_TABLE = 254
SCOPE_LINK = 253
LINK_LOCAL_V6 = IPv6Network("fe80::/10")


class HostNetworkError(OSError):
    """The host network could not be configured; the message says what and where, `errno` the cause."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.errno = code


@dataclass(frozen=True)
class InterfaceState:
    """What the kernel says about one interface: addresses, MTU, up, and the routes wgmesh owns on it."""

    addresses: tuple[IPInterface, ...]
    mtu: int
    up: bool
    routes: tuple[IPNetwork, ...]


def normalize_interfaces(addresses: Iterable[IPInterface | str]) -> tuple[IPInterface, ...]:
    """Sorted, de-duplicated interface addresses (IPv4 first); strings are parsed ("10.0.0.1/24")."""
    found = {a if isinstance(a, IPv4Interface | IPv6Interface) else ip_interface(a) for a in addresses}
    return tuple(sorted(found, key=lambda a: (a.version, a.ip, a.network.prefixlen)))


@contextlib.contextmanager
def _rtnl(netns: str | None) -> Iterator[Rtnl]:
    try:
        rtnl = Rtnl(netns)
    except FileNotFoundError:
        raise HostNetworkError(errno.ENOENT, f"network namespace {netns} does not exist") from None
    try:
        yield rtnl
    finally:
        rtnl.close()


def _link(rtnl: Rtnl, ifname: str, netns: str | None) -> Link:
    link = rtnl.link(ifname)
    if link is None:
        where = f" in namespace {netns}" if netns else ""
        raise HostNetworkError(errno.ENODEV, f"interface {ifname}{where} does not exist")
    return link


def _addresses(rtnl: Rtnl, index: int) -> tuple[IPInterface, ...]:
    return normalize_interfaces(ip_interface(f"{a.address}/{a.prefixlen}") for a in rtnl.addresses(index))


def _routes(rtnl: Rtnl, index: int) -> dict[IPNetwork, int]:
    """The routes wgmesh owns on the interface, with the scope each was installed with (deleting a
    route must name its scope, or the kernel answers ESRCH)."""
    found: dict[IPNetwork, int] = {}
    for route in rtnl.routes(index):
        if route.protocol != ROUTE_PROTO or route.table != MAIN_TABLE:
            continue
        dst = route.dst if route.dst is not None else ("0.0.0.0" if route.family == 2 else "::")
        found[ip_network(f"{dst}/{route.dst_len}")] = route.scope
    return found


def read_interface(ifname: str, netns: str | None = None) -> InterfaceState:
    """The current addresses, MTU, link state and wgmesh routes of `ifname`."""
    with _rtnl(netns) as rtnl:
        link = _link(rtnl, ifname, netns)
        return InterfaceState(
            _addresses(rtnl, link.index), link.mtu, link.up, normalize_ips(_routes(rtnl, link.index))
        )


def configure_interface(
    ifname: str,
    addresses: Iterable[IPInterface | str],
    routes: Iterable[IPNetwork | str] = (),
    *,
    mtu: int = DEFAULT_MTU,
    netns: str | None = None,
) -> list[str]:
    """Make `ifname` carry exactly `addresses`, have `mtu`, be up, and have exactly `routes` (among the
    routes wgmesh owns). Returns one line per change made; empty when everything already matched.

    Raises HostNetworkError when the namespace or interface does not exist or the kernel refuses."""
    want_addrs = normalize_interfaces(addresses)
    want_routes = normalize_ips(routes)
    if not 68 <= mtu <= 65535:
        raise HostNetworkError(errno.EINVAL, f"MTU {mtu}: must be 68..65535")
    changes: list[str] = []
    with _rtnl(netns) as rtnl:
        link = _link(rtnl, ifname, netns)
        index = link.index
        try:
            if link.mtu != mtu:
                rtnl.set_mtu(index, mtu)
                changes.append(f"{ifname}: MTU {link.mtu} → {mtu}")
            have_addrs = _addresses(rtnl, index)
            for addr in have_addrs:
                if addr not in want_addrs and addr.ip not in LINK_LOCAL_V6:
                    rtnl.delete_address(index, addr.ip, addr.network.prefixlen)
                    changes.append(f"{ifname}: address {addr} removed")
            for addr in want_addrs:
                if addr not in have_addrs:
                    rtnl.replace_address(index, addr.ip, addr.network.prefixlen)
                    changes.append(f"{ifname}: address {addr} added")
            if not link.up:
                rtnl.set_up(index)
                changes.append(f"{ifname}: link up")
            have_routes = _routes(rtnl, index)
            for net, scope in have_routes.items():
                if net not in want_routes:
                    _del_route(rtnl, index, net, scope)
                    changes.append(f"{ifname}: route {net} removed")
            for net in want_routes:
                if net not in have_routes:
                    scope = SCOPE_LINK if isinstance(net, IPv4Network) else 0
                    rtnl.replace_route(
                        net.network_address,
                        net.prefixlen,
                        oif=index,
                        table=MAIN_TABLE,
                        protocol=ROUTE_PROTO,
                        scope=scope,
                    )
                    changes.append(f"{ifname}: route {net} added")
        except NetlinkError as e:
            done = f" (done so far: {'; '.join(changes)})" if changes else ""
            raise HostNetworkError(e.code, f"configuring {ifname}: {e}{done}") from None
    return changes


def _del_route(rtnl: Rtnl, index: int, net: IPNetwork, scope: int) -> None:
    rtnl.delete_route(
        net.network_address, net.prefixlen, oif=index, table=MAIN_TABLE, protocol=ROUTE_PROTO, scope=scope
    )


# --- forwarding -------------------------------------------------------------------------------------


def _forwarding_keys(ifname: str) -> tuple[str, str]:
    return f"net/ipv4/conf/{ifname}/forwarding", f"net/ipv6/conf/{ifname}/forwarding"


def _read_sysctl(key: str, netns: str | None) -> str:
    if netns is None:
        return Path("/proc/sys", key).read_text().strip()
    return _in_netns(netns, ["cat", f"/proc/sys/{key}"]).strip()


def _write_sysctl(key: str, value: str, netns: str | None) -> None:
    if netns is None:
        Path("/proc/sys", key).write_text(value + "\n")
    else:
        # /proc/sys/net shows the namespace of the process that opens it: write from inside.
        _in_netns(netns, ["sh", "-c", 'printf "%s\\n" "$1" > "$2"', "sh", value, f"/proc/sys/{key}"])


def _in_netns(netns: str, argv: Sequence[str]) -> str:
    result = subprocess.run(
        ["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, check=False, timeout=10
    )
    if result.returncode != 0:
        raise HostNetworkError(
            errno.EIO, f"in namespace {netns}: {' '.join(argv[:2])}: {result.stderr.strip() or 'failed'}"
        )
    return result.stdout


def read_forwarding(ifname: str, netns: str | None = None) -> bool:
    """True when IPv4 forwarding is on for packets arriving on `ifname`."""
    try:
        return _read_sysctl(_forwarding_keys(ifname)[0], netns) == "1"
    except FileNotFoundError:
        raise HostNetworkError(errno.ENODEV, f"interface {ifname} does not exist") from None


def set_forwarding(ifname: str, enabled: bool, netns: str | None = None) -> list[str]:
    """Switch forwarding of packets arriving on `ifname` on or off (IPv4 and IPv6, where the kernel has
    IPv6). Returns the changes made. Note: Linux forwards IPv6 only when `net.ipv6.conf.all.forwarding`
    is also on; that switch is host-wide (it stops accepting router advertisements), so it is left to
    the operator."""
    value = "1" if enabled else "0"
    changes = []
    for key in _forwarding_keys(ifname):
        try:
            old = _read_sysctl(key, netns)
        except (FileNotFoundError, HostNetworkError):
            if key.startswith("net/ipv6"):
                continue  # no IPv6 on this host or interface
            raise HostNetworkError(errno.ENODEV, f"interface {ifname} does not exist") from None
        if old != value:
            _write_sysctl(key, value, netns)
            changes.append(f"{ifname}: {key.split('/')[1]} forwarding {'on' if enabled else 'off'}")
    return changes


class NetlinkHostNetwork:
    """Addresses, routes, MTU, link up and forwarding of one interface (`netns` None: our own)."""

    def __init__(self, netns: str | None = None, mtu: int = DEFAULT_MTU) -> None:
        self.netns = netns
        self.mtu = mtu
        self.ifname: str | None = None

    def up(self, ifname: str) -> None:
        self.ifname = ifname

    def set(self, config: HostConfig) -> list[str]:
        """Make the interface carry exactly the addresses and routes, be up with our MTU, and forward
        or not."""
        ifname = self.ifname
        if ifname is None:
            raise ValueError("host network: set before up")
        changes = configure_interface(ifname, config.addresses, config.routes, mtu=self.mtu, netns=self.netns)
        return changes + set_forwarding(ifname, config.forward, netns=self.netns)

    def close(self) -> None:
        self.ifname = None
