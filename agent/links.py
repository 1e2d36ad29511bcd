"""Link measurements and the per-peer status view, made from a network map, the device as read, and
probe results. Pure: time comes in as `now`.

Rule (see wire.models.LinkMeasurement): a measurement describes the DIRECT link. Peers the map routes
straight to are probed on their tunnel address. A peer reached through a relay is probed, with
`direct_probes`, on its probe address (agent.desired: always on its direct WireGuard path), and its
rtt/loss are reported only when some probe came back (an agent without probe addresses answers none,
which says nothing about the link: a relayed link is already avoided, so no reply means no claim);
otherwise, and for peers reached not at all, rtt/loss are None and only the age of the latest
handshake is reported, which also tells the controller that the direct link works again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.desired import peer_routes, probe_address
from agent.device import Device
from agent.status import PeerView
from wire.models import IPAddress, LinkMeasurement, NetMap, NodeId, Peer


@dataclass(frozen=True)
class ProbeResult:
    sent: int
    received: int
    rtt_ms: float | None  # median of the replies; None: no reply

    @property
    def loss(self) -> float:
        return 1.0 if self.sent == 0 else (self.sent - self.received) / self.sent


def probe_targets(netmap: NetMap, direct_probes: bool = False) -> list[IPAddress]:
    """The addresses to probe: the tunnel addresses of the directly routed peers, and with
    `direct_probes` the probe addresses of the relayed ones."""
    out: list[IPAddress] = []
    for r in peer_routes(netmap).values():
        target = _target(netmap, r.kind, r.peer, direct_probes)
        if target is not None:
            out.append(target)
    return out


def _target(netmap: NetMap, kind: str, peer: Peer, direct_probes: bool) -> IPAddress | None:
    if kind == "direct":
        return peer.tunnel_address
    if kind == "relay" and direct_probes:
        return probe_address(netmap.node.mesh_cidr, peer.tunnel_address)
    return None


def measure_links(
    netmap: NetMap,
    device: Device | None,
    probes: Mapping[IPAddress, ProbeResult],
    now: float,
    direct_probes: bool = False,
) -> dict[NodeId, LinkMeasurement]:
    """One measurement per peer of the map (device None: handshakes unknown)."""
    result: dict[NodeId, LinkMeasurement] = {}
    for route in peer_routes(netmap).values():
        peer = route.peer
        handshake = _live(device, peer)[0]
        target = _target(netmap, route.kind, peer, direct_probes)
        probe = probes.get(target) if target is not None else None
        if probe is not None and route.kind == "relay" and probe.received == 0:
            probe = None  # no reply through the direct path: no claim about it (see the module rule)
        result[peer.node_id] = LinkMeasurement(
            peer_id=peer.node_id,
            rtt_ms=probe.rtt_ms if probe is not None else None,
            loss=probe.loss if probe is not None else None,
            handshake_age_s=max(0.0, now - handshake) if handshake is not None else None,
        )
    return result


def peer_views(
    netmap: NetMap, device: Device | None, measurements: Mapping[NodeId, LinkMeasurement]
) -> list[PeerView]:
    """The peers as status.json shows them, sorted by node id."""
    views = []
    for route in peer_routes(netmap).values():
        peer = route.peer
        handshake, rx, tx, endpoint = _live(device, peer)
        measured = measurements.get(peer.node_id)
        views.append(
            PeerView(
                node_id=peer.node_id,
                name=peer.name,
                tunnel_address=peer.tunnel_address,
                wg_public_key=peer.wg_public_key.base64(),
                endpoint=endpoint or (peer.endpoints[0] if peer.endpoints else None),
                latest_handshake=handshake,
                rx_bytes=rx,
                tx_bytes=tx,
                rtt_ms=measured.rtt_ms if measured is not None else None,
                loss=measured.loss if measured is not None else None,
                route=route.kind,
                via=route.via.name if route.via is not None else None,
            )
        )
    return sorted(views, key=lambda v: v.node_id)


def _live(device: Device | None, peer: Peer) -> tuple[float | None, int, int, str | None]:
    """(latest handshake, rx bytes, tx bytes, endpoint) of `peer` on the device; unknown: None/0."""
    status = device.peers.get(peer.wg_public_key) if device is not None else None
    if status is None:
        return None, 0, 0, None
    return status.last_handshake, status.rx_bytes, status.tx_bytes, status.config.endpoint
