"""What the host should look like for one network map: the WireGuard device, the interface addresses and
routes, IP forwarding, and how each peer is reached. Pure: a NetMap and the private key in, data out.

Rules:
- The controller's `Peer.allowed_ips` are authoritative: a destination relayed through peer R appears in
  R's allowed IPs, not in its own peer's (WireGuard gives an allowed IP to exactly one peer).
- Should a map ever list one network under two peers, the route decides (`Route.via` of the destination
  whose address it is), else the lowest node id keeps it: the result never depends on list order.
- This node's own tunnel address is never an allowed IP of a peer.
- A peer's endpoint is its first advertised endpoint that is usable: an IP literal, or a host name the
  caller resolved (`resolved`: name endpoint -> "ip:port", or None when it does not resolve). None
  usable means we wait for the peer to call us.
- Direct probes (`direct_probes`): every node also answers on its *probe address*, an IPv6 ULA derived
  from the mesh CIDR and its tunnel address (`probe_address`), which stays in its own peer entry's
  allowed IPs whatever the routes say. Probing it therefore always crosses the DIRECT WireGuard path,
  also while the node's tunnel address is relayed, which is how a relayed pair keeps measuring its
  direct link (agent.links) and the controller can route it back when it heals. Every agent derives
  the same addresses: nothing is added to the map.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv6Address, IPv6Interface, IPv6Network, ip_interface, ip_network

from agent.device import DeviceConfig, IPNetwork, PeerConfig, endpoint_address
from agent.hostnet.base import HostConfig
from agent.status import RouteKind
from keys.types import WireGuardPrivateKey
from wire.models import IPAddress, NetMap, NodeId, NodePolicy, Peer

IPInterface = IPv4Interface | IPv6Interface


@dataclass(frozen=True)
class PeerRoute:
    """How this node reaches one peer: straight, through a relay, or not at all."""

    peer: Peer
    kind: RouteKind
    via: Peer | None = None  # the relay when kind == "relay"


@dataclass(frozen=True)
class DesiredState:
    device: DeviceConfig
    addresses: tuple[IPInterface, ...]  # on the WireGuard interface
    routes: tuple[IPNetwork, ...]  # destinations routed into the WireGuard interface
    forward: bool  # forward packets between peers (this node relays)
    policy: NodePolicy | None = None  # what the host firewall enforces (agent.firewall); None: no policy

    @property
    def host(self) -> HostConfig:
        """The host network's part (agent.hostnet)."""
        return HostConfig(self.addresses, self.routes, self.forward)


PROBE_SUBNET = 0x7770
"""The 16-bit subnet of the probe prefix inside the mesh's ULA /48."""


def probe_prefix(mesh_cidr: IPNetwork) -> IPv6Network:
    """The /64 of every probe address of this mesh: fd00::/8 + 40 bits of the mesh CIDR's hash."""
    global_id = int.from_bytes(hashlib.blake2b(str(mesh_cidr).encode(), digest_size=5).digest(), "big")
    return IPv6Network(((0xFD << 120) | (global_id << 80) | (PROBE_SUBNET << 64), 64))


def probe_address(mesh_cidr: IPNetwork, tunnel_address: IPAddress) -> IPv6Address:
    """The node's probe address: the probe prefix and the low 64 bits of its tunnel address (unique,
    as tunnel addresses are unique in a mesh CIDR of at least 2^-64 of the space)."""
    return probe_prefix(mesh_cidr)[int(tunnel_address) & (2**64 - 1)]


def host_network(address: IPAddress) -> IPNetwork:
    """The /32 (or /128) of one address."""
    return ip_network(address)


def choose_endpoint(endpoints: Sequence[str], resolved: Mapping[str, str | None]) -> str | None:
    for endpoint in endpoints:
        if endpoint_address(endpoint) is not None:
            return endpoint
        usable = resolved.get(endpoint)
        if usable is not None:
            return usable
    return None


def name_endpoints(netmap: NetMap) -> list[str]:
    """The endpoints of the map that name a host instead of an IP: the caller resolves them."""
    return sorted({e for p in netmap.peers for e in p.endpoints if endpoint_address(e) is None})


def build_desired(
    netmap: NetMap,
    private_key: WireGuardPrivateKey,
    resolved: Mapping[str, str | None] | None = None,
    direct_probes: bool = False,
) -> DesiredState:
    """The host for `netmap`; `direct_probes`: with the probe addresses (see the module rules)."""
    own = host_network(netmap.node.tunnel_address)
    owner = _allowed_ip_owners(netmap)
    cidr = netmap.node.mesh_cidr
    peers = []
    for peer in netmap.peers:
        ips = [net for net in peer.allowed_ips if net != own and owner.get(net) == peer.node_id]
        if direct_probes:
            ips.append(host_network(probe_address(cidr, peer.tunnel_address)))
        peers.append(
            PeerConfig(
                public_key=peer.wg_public_key,
                allowed_ips=tuple(ips),
                endpoint=choose_endpoint(peer.endpoints, resolved or {}),
                persistent_keepalive=peer.persistent_keepalive,
            )
        )
    device = DeviceConfig.build(private_key, peers, listen_port=netmap.node.listen_port)
    address = ip_interface(f"{netmap.node.tunnel_address}/{cidr.prefixlen}")
    addresses: tuple[IPInterface, ...] = (address,)
    routes: tuple[IPNetwork, ...] = (cidr,)
    if direct_probes:
        prefix = probe_prefix(cidr)
        addresses += (IPv6Interface(f"{probe_address(cidr, netmap.node.tunnel_address)}/{prefix.prefixlen}"),)
        routes += (prefix,)
    return DesiredState(
        device=device,
        addresses=addresses,
        routes=routes,
        forward=netmap.forward,
        policy=netmap.policy,
    )


def _allowed_ip_owners(netmap: NetMap) -> dict[IPNetwork, NodeId]:
    """For every network some peer claims, the one peer that gets it (see the module rules)."""
    claims: dict[IPNetwork, list[NodeId]] = {}
    for peer in netmap.peers:
        for net in peer.allowed_ips:
            claims.setdefault(net, []).append(peer.node_id)
    via_for = {host_network(r.destination_address): r.via for r in netmap.routes}
    owners: dict[IPNetwork, NodeId] = {}
    for net, ids in claims.items():
        routed = via_for.get(net)
        owners[net] = routed if routed in ids else min(ids)
    return owners


def peer_routes(netmap: NetMap) -> dict[NodeId, PeerRoute]:
    """Every peer of the map, keyed by node id, with the way this node reaches it."""
    by_id = {p.node_id: p for p in netmap.peers}
    via_of = {r.destination: r.via for r in netmap.routes}
    owner = _allowed_ip_owners(netmap)
    result: dict[NodeId, PeerRoute] = {}
    for peer in netmap.peers:
        # A peer without a Route entry is reached through whichever peer holds its address.
        via = via_of.get(peer.node_id, owner.get(host_network(peer.tunnel_address)))
        if via is None or (via != peer.node_id and via not in by_id):
            result[peer.node_id] = PeerRoute(peer, "none")
        elif via == peer.node_id:
            result[peer.node_id] = PeerRoute(peer, "direct")
        else:
            result[peer.node_id] = PeerRoute(peer, "relay", by_id[via])
    return result


def direct_peers(netmap: NetMap) -> list[Peer]:
    """The peers whose direct link the agent probes: those the map routes straight to."""
    return [r.peer for r in peer_routes(netmap).values() if r.kind == "direct"]
