"""Network map deltas: the pure pair `netmap_delta(old, new)` and `apply_delta(old, delta)`.

Rule (property-tested): for any two maps in canonical order (peers by node_id, routes by destination,
ids unique), `apply_delta(old, netmap_delta(old, new)) == new`. `apply_delta` returns canonical order
whatever order the delta lists its records in.
"""

from __future__ import annotations

from wire.models import NetMap, NetMapDelta, Peer, Route


class DeltaMismatch(ValueError):
    """A delta whose base_serial is not the serial of the map it is applied to."""


def netmap_delta(old: NetMap, new: NetMap) -> NetMapDelta:
    """What turns `old` into `new`: changed or new peers and routes in full, removed ids."""
    old_peers = {p.node_id: p for p in old.peers}
    new_peer_ids = {p.node_id for p in new.peers}
    old_routes = {r.destination: r for r in old.routes}
    new_route_ids = {r.destination for r in new.routes}
    return NetMapDelta(
        kind="delta",
        serial=new.serial,
        base_serial=old.serial,
        node=new.node,
        forward=new.forward,
        policy=new.policy,
        peers_upserted=[p for p in new.peers if old_peers.get(p.node_id) != p],
        peers_removed=sorted(old_peers.keys() - new_peer_ids),
        routes_upserted=[r for r in new.routes if old_routes.get(r.destination) != r],
        routes_removed=sorted(old_routes.keys() - new_route_ids),
        protocol_version=new.protocol_version,
    )


def apply_delta(old: NetMap, delta: NetMapDelta) -> NetMap:
    """The map at `delta.serial`. Raises DeltaMismatch when `delta` does not apply to `old`."""
    if delta.base_serial != old.serial:
        raise DeltaMismatch(
            f"delta applies to serial {delta.base_serial}, the map held is serial {old.serial}"
        )
    peers: dict[int, Peer] = {p.node_id: p for p in old.peers}
    for node_id in delta.peers_removed:
        peers.pop(node_id, None)
    for p in delta.peers_upserted:
        peers[p.node_id] = p
    routes: dict[int, Route] = {r.destination: r for r in old.routes}
    for destination in delta.routes_removed:
        routes.pop(destination, None)
    for r in delta.routes_upserted:
        routes[r.destination] = r
    # Every part is already validated (the held map and the delta), so nothing is validated again.
    return NetMap.model_construct(
        kind="full",
        serial=delta.serial,
        node=delta.node,
        peers=[peers[k] for k in sorted(peers)],
        routes=[routes[k] for k in sorted(routes)],
        forward=delta.forward,
        policy=delta.policy,
        protocol_version=delta.protocol_version,
    )
