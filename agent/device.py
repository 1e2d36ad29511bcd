"""The WireGuard device as wgmesh sees it: what we want (`DeviceConfig`), what is there (`Device`), and
the declarative update that moves one to the other (`DeviceUpdate`). Pure data; no I/O.

Invariants:
- Peers are keyed by public key; allowed IPs are kept sorted and de-duplicated so equal configs compare
  equal whatever order they were built in.
- `DeviceUpdate` is per peer and incremental: it never asks a backend to replace all peers, because
  that drops every session (UAPI `replace_peers`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from keys.types import PresharedKey, WireGuardPrivateKey, WireGuardPublicKey

IPNetwork = IPv4Network | IPv6Network


def normalize_ips(ips: Iterable[IPNetwork | str]) -> tuple[IPNetwork, ...]:
    """Sorted, de-duplicated networks (IPv4 before IPv6); strings are parsed strictly."""
    nets = {ip if isinstance(ip, IPv4Network | IPv6Network) else ip_network(ip) for ip in ips}
    return tuple(sorted(nets, key=lambda n: (n.version, n.network_address, n.prefixlen)))


def canonical_endpoint(text: str) -> str:
    """`host:port` / `[v6]:port` in one spelling: IP literals are normalized (`[0::1]` -> `[::1]`),
    host names are kept (resolving them is the caller's job; UAPI and netlink accept only IPs).
    Raises ValueError naming what is wrong."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"endpoint {text!r}: expected host:port or [v6]:port")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"endpoint {text!r}: port must be 1..65535")
    port = int(port_text)
    if host.startswith("[") and host.endswith("]"):
        try:
            return f"[{IPv6Address(host[1:-1])}]:{port}"
        except ValueError:
            raise ValueError(f"endpoint {text!r}: {host} is not an IPv6 address") from None
    if ":" in host:
        raise ValueError(f"endpoint {text!r}: write an IPv6 endpoint as [addr]:port")
    try:
        return f"{IPv4Address(host)}:{port}"
    except ValueError:
        return host.lower() + f":{port}"


def endpoint_address(endpoint: str) -> tuple[IPv4Address | IPv6Address, int] | None:
    """The (IP, port) of a canonical endpoint, or None when its host is a name, not an IP."""
    host, _, port = endpoint.rpartition(":")
    try:
        return ip_address(host.strip("[]")), int(port)
    except ValueError:
        return None


@dataclass(frozen=True)
class PeerConfig:
    public_key: WireGuardPublicKey
    allowed_ips: tuple[IPNetwork, ...] = ()
    endpoint: str | None = None  # "host:port" / "[v6]:port"; None: learn it from the peer's packets
    persistent_keepalive: int | None = None  # seconds; None or 0: off
    preshared_key: PresharedKey | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_ips", normalize_ips(self.allowed_ips))
        if self.endpoint is not None:
            object.__setattr__(self, "endpoint", canonical_endpoint(self.endpoint))
        if self.persistent_keepalive is not None and not 0 <= self.persistent_keepalive <= 65535:
            raise ValueError(f"persistent keepalive {self.persistent_keepalive}: must be 0..65535 seconds")
        if self.persistent_keepalive == 0:
            object.__setattr__(self, "persistent_keepalive", None)


@dataclass(frozen=True)
class DeviceConfig:
    """The whole desired state of one interface."""

    private_key: WireGuardPrivateKey
    listen_port: int | None = None  # None: let the implementation choose
    fwmark: int | None = None  # None or 0: no mark
    peers: Mapping[WireGuardPublicKey, PeerConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.fwmark == 0:
            object.__setattr__(self, "fwmark", None)
        if self.listen_port is not None and not 1 <= self.listen_port <= 65535:
            raise ValueError(f"listen port {self.listen_port}: must be 1..65535")

    @classmethod
    def build(
        cls,
        private_key: WireGuardPrivateKey,
        peers: Iterable[PeerConfig] = (),
        listen_port: int | None = None,
        fwmark: int | None = None,
    ) -> DeviceConfig:
        return cls(private_key, listen_port, fwmark, {p.public_key: p for p in peers})


@dataclass(frozen=True)
class PeerStatus:
    """A peer as read from a running device: its config plus what the data plane observed."""

    config: PeerConfig
    last_handshake: float | None = None  # unix seconds; None: never
    rx_bytes: int = 0
    tx_bytes: int = 0
    protocol_version: int | None = None  # None: the backend did not say


@dataclass(frozen=True)
class Device:
    """A running interface as a backend reads it."""

    name: str
    private_key: WireGuardPrivateKey | None
    listen_port: int | None
    fwmark: int | None
    peers: Mapping[WireGuardPublicKey, PeerStatus]

    def config(self) -> DeviceConfig | None:
        """The device's configuration without runtime counters (None when it has no private key)."""
        if self.private_key is None:
            return None
        return DeviceConfig(
            self.private_key, self.listen_port, self.fwmark, {k: p.config for k, p in self.peers.items()}
        )


@dataclass(frozen=True)
class PeerUpdate:
    """Create or change one peer. `replace_allowed_ips` is always set: the update carries the full list."""

    config: PeerConfig
    update_only: bool = False  # True: the peer exists; never create it by accident


@dataclass(frozen=True)
class DeviceUpdate:
    """A declarative, incremental change to one device. Empty means nothing to do."""

    private_key: WireGuardPrivateKey | None = None  # None: unchanged
    listen_port: int | None = None  # None: unchanged
    fwmark: int | None = None  # None: unchanged; 0: clear the mark
    upsert: tuple[PeerUpdate, ...] = ()
    remove: tuple[WireGuardPublicKey, ...] = ()

    def is_empty(self) -> bool:
        return (
            self.private_key is None
            and self.listen_port is None
            and self.fwmark is None
            and not self.upsert
            and not self.remove
        )


@dataclass(frozen=True)
class PeerSwap:
    """Key rotation on a peer: replace the peer `old` by `new.public_key` in one configuration call.

    The new peer is created first with every allowed IP of the old one (WireGuard moves an allowed IP
    given to another peer atomically), the old peer's live endpoint and a keepalive (0 -> n sends one
    at once, which starts the handshake); then the old peer is removed. Packets to the rotating node
    are staged on the new peer until that handshake completes, never dropped for want of a route."""

    old: WireGuardPublicKey
    new: PeerConfig


@dataclass(frozen=True)
class KeySwitch:
    """Key rotation on the rotating node: set `private_key`, then turn each of `kick`'s peers' keepalive
    off and on (to the seconds given), so each sends a keepalive at once and with it a handshake on the
    new key. The peers' sessions stop sending but keep receiving until they age out."""

    private_key: WireGuardPrivateKey
    kick: tuple[tuple[WireGuardPublicKey, int], ...] = ()

    def __post_init__(self) -> None:
        for key, seconds in self.kick:
            if not 1 <= seconds <= 65535:
                raise ValueError(f"peer {key}: a kick needs a keepalive of 1..65535 s, not {seconds}")
