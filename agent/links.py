"""Link measurements and the per-peer status view, made from a network map, the device as read, and
probe results. Pure: time comes in as `now`.

Rule (see wire.models.LinkMeasurement): a measurement describes the DIRECT link. Only peers the map
routes straight to are probed; a peer reached through a relay (or not at all) is reported with
rtt/loss None and only the age of its latest handshake, which is what tells the controller that the
direct link works again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.desired import peer_routes
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


def probe_targets(netmap: NetMap) -> list[IPAddress]:
    """The tunnel addresses to probe: those of the directly routed peers."""
    return [r.peer.tunnel_address for r in peer_routes(netmap).values() if r.kind == "direct"]


def measure_links(
    netmap: NetMap,
    device: Device | None,
    probes: Mapping[IPAddress, ProbeResult],
    now: float,
) -> dict[NodeId, LinkMeasurement]:
    """One measurement per peer of the map (device None: handshakes unknown)."""
    result: dict[NodeId, LinkMeasurement] = {}
    for route in peer_routes(netmap).values():
        peer = route.peer
        handshake = _live(device, peer)[0]
        probe = probes.get(peer.tunnel_address) if route.kind == "direct" else None
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
