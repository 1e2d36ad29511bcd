"""Network maps: one node's `wire.models.NetMap`, rendered as JSON bytes, and its content digest.

A map is a pure function of (the directory of node cards in routing order, the node's row of next hops
and path costs, its forward flag, the mesh CIDR, the keepalive). `map_digest` hashes exactly those
inputs, so two maps are equal iff their digests are (up to hash collisions): the controller compares
digests to decide whether a node's map really changed, without rendering a map nobody asked for.

Rules:
- Every other node appears as a peer, with its endpoints, so WireGuard keeps trying the direct link
  (a handshake newer than the failure is what brings a link back).
- A destination D reached through relay R: D's /32 is in R's allowed IPs and NOT in D's own peer
  entry (an allowed IP belongs to one peer only). An unreachable destination keeps its own /32.
- Per-node JSON fragments are rendered once per card; a map is mostly a join of them, which is what
  makes pushing a thousand maps cheap.
- A delta (`render_delta`) compares the fragments of two maps of one node by node id: a peer or route
  whose JSON differs is sent whole, an id only in the old map is removed. It is therefore exactly
  `wire.delta.netmap_delta` of the two maps, without parsing either.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from wire import PROTOCOL_VERSION
from wire.models import IPAddress, IPNetwork

if TYPE_CHECKING:
    from controller.access import NodeAccess

DEFAULT_KEEPALIVE_S = 25


@dataclass(frozen=True)
class NodeCard:
    """The public part of one node: what every peer's map says about it."""

    node_id: int
    name: str
    role: str
    wg_public_key: str  # base64
    identity_public_key: str  # base64
    tunnel_address: IPAddress
    endpoints: tuple[str, ...]
    listen_port: int
    key_rotation: int | None = None  # a key rotation asked of this node: in its own map only
    tags: tuple[str, ...] = ()  # policy tags, sorted; empty without a policy (maps then say nothing)

    @cached_property
    def tags_json(self) -> bytes:
        """`"tags":[...],` when the node has tags, else nothing (the bytes of maps without a policy)."""
        return b'"tags":%s,' % json.dumps(list(self.tags)).encode() if self.tags else b""

    @cached_property
    def host_route(self) -> bytes:
        """The node's own tunnel address as a one-address network, JSON-quoted."""
        return json.dumps(f"{self.tunnel_address}/{self.tunnel_address.max_prefixlen}").encode()

    @cached_property
    def peer_head(self) -> bytes:
        return (
            (
                f'{{"node_id":{self.node_id},"name":{json.dumps(self.name)},"role":{json.dumps(self.role)},'
                f'"wg_public_key":{json.dumps(self.wg_public_key)},'
                f'"identity_public_key":{json.dumps(self.identity_public_key)},'
                f'"tunnel_address":{json.dumps(str(self.tunnel_address))},'
                f'"endpoints":{json.dumps(list(self.endpoints))},'
            ).encode()
            + self.tags_json
            + b'"allowed_ips":['
        )

    @cached_property
    def route_head(self) -> bytes:
        return (
            f'{{"destination":{self.node_id},'
            f'"destination_address":{json.dumps(str(self.tunnel_address))},"via":'
        ).encode()


@dataclass(frozen=True)
class CardMatch:
    """The cards of a newer directory against an older one's, per position in the newer one."""

    old_pos: npt.NDArray[np.int64]  # the same node's position in the older directory; -1: a new node
    removed: list[int]  # ids only in the older directory, ascending
    gone: npt.NDArray[np.int64]  # their positions in the older directory
    same_peer: npt.NDArray[np.bool_]  # the node's peer JSON head and host route are unchanged
    same_route: npt.NDArray[np.bool_]  # the node's route JSON head is unchanged
    same_host: npt.NDArray[np.bool_]  # the node's host route (its /32 in a relay's allowed IPs) is unchanged
    same_tail: bool  # keepalive and mesh CIDR unchanged


class Directory:
    """The node cards in routing-index order, the shared parts of every map, and their digest."""

    def __init__(self, cards: Sequence[NodeCard], mesh_cidr: IPNetwork, keepalive_s: int | None) -> None:
        self.cards = list(cards)
        self.mesh_cidr = mesh_cidr
        self.ids = np.array([c.node_id for c in self.cards], dtype=np.int64)
        self.id_list = [c.node_id for c in self.cards]
        keepalive = "null" if keepalive_s is None else str(int(keepalive_s))
        self.peer_tail = f'],"persistent_keepalive":{keepalive}}}'.encode()
        self.direct_peers = [c.peer_head + c.host_route + self.peer_tail for c in self.cards]
        self.direct_route_heads = [c.route_head + b'%d,"cost":' % c.node_id for c in self.cards]
        self._cost_texts: dict[int, bytes] = {-1: b"null"}
        self._matches: dict[int, tuple[Directory, CardMatch]] = {}
        h = hashlib.blake2b(digest_size=32)
        h.update(f"{PROTOCOL_VERSION}|{mesh_cidr}|{keepalive}|".encode())
        for c in self.cards:
            h.update(c.peer_head)
            h.update(c.host_route)
            h.update(b"|%d\n" % c.listen_port)
        self.digest = h.digest()

    @cached_property
    def card_hashes(self) -> npt.NDArray[np.uint64]:
        """Per card, a 64-bit hash of everything a map shows of it (maps under a policy digest these)."""
        return np.array(
            [
                int.from_bytes(
                    hashlib.blake2b(
                        c.peer_head + c.host_route + b"|%d" % c.listen_port, digest_size=8
                    ).digest(),
                    "big",
                )
                for c in self.cards
            ],
            dtype=np.uint64,
        )

    def match(self, older: Directory) -> CardMatch:
        """How this directory's cards line up with those of `older` (cached: maps of many nodes are
        diffed between the same two directories)."""
        cached = self._matches.get(id(older))
        if cached is not None and cached[0] is older:
            return cached[1]
        where = {node_id: p for p, node_id in enumerate(older.id_list)}
        old_pos = np.array([where.get(node_id, -1) for node_id in self.id_list], dtype=np.int64)
        same_peer = np.zeros(len(self.cards), dtype=bool)
        same_route = np.zeros(len(self.cards), dtype=bool)
        same_host = np.zeros(len(self.cards), dtype=bool)
        for k, (card, p) in enumerate(zip(self.cards, old_pos.tolist(), strict=True)):
            if p >= 0:
                was = older.cards[p]
                same = was is card
                same_peer[k] = same or (was.peer_head == card.peer_head and was.host_route == card.host_route)
                same_route[k] = same or was.route_head == card.route_head
                same_host[k] = same or was.host_route == card.host_route
        kept = set(self.id_list)
        match = CardMatch(
            old_pos=old_pos,
            removed=sorted(i for i in older.id_list if i not in kept),
            gone=np.array([p for p, i in enumerate(older.id_list) if i not in kept], dtype=np.int64),
            same_peer=same_peer,
            same_route=same_route,
            same_host=same_host,
            same_tail=older.peer_tail == self.peer_tail and older.mesh_cidr == self.mesh_cidr,
        )
        if len(self._matches) >= 8:
            self._matches.pop(next(iter(self._matches)))
        self._matches[id(older)] = (older, match)
        return match

    def cost_texts(self, tenths: list[int]) -> list[bytes]:
        """JSON numbers for costs in tenths (-1: null), from a cache: maps repeat the same few costs."""
        cache = self._cost_texts
        for t in set(tenths) - cache.keys():
            cache[t] = b"%d.%d" % divmod(t, 10)
        return list(map(cache.__getitem__, tenths))


def cost_tenths(costs: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Path costs as maps show them: tenths of a unit, -1 when unreachable."""
    finite = np.isfinite(costs)
    return np.where(finite, np.rint(np.where(finite, costs, 0.0) * 10), -1).astype(np.int64)


def map_digest(
    directory: Directory,
    index: int,
    next_row: npt.NDArray[np.int32],
    tenths: npt.NDArray[np.int64],
    forward: bool,
    access: NodeAccess | None = None,
) -> bytes:
    """Digest of everything `render_netmap` puts in this node's map except the serial."""
    if access is not None:
        return _policy_digest(directory, index, next_row, tenths, access)
    h = hashlib.blake2b(directory.digest, digest_size=32)
    h.update(index.to_bytes(4, "big"))
    h.update((directory.cards[index].key_rotation or 0).to_bytes(8, "big"))
    h.update(np.ascontiguousarray(next_row, dtype=np.int32).tobytes())
    h.update(np.ascontiguousarray(tenths, dtype=np.int64).tobytes())
    h.update(b"\x01" if forward else b"\x00")
    return h.digest()


def _policy_digest(
    directory: Directory,
    index: int,
    next_row: npt.NDArray[np.int32],
    tenths: npt.NDArray[np.int64],
    access: NodeAccess,
) -> bytes:
    """The digest of a map under a policy: of only what the map shows (its own card, the cards of its
    peers, its routes by node id), so a change elsewhere in the mesh leaves it alone."""
    positions = np.arange(len(directory.cards))
    via = np.where(next_row >= 0, next_row, positions)
    relayed = access.relayed & (via != positions)
    shown_via = np.where(relayed, via, positions)
    shown_tenths = np.where(relayed | (next_row == positions) | (next_row < 0), tenths, -1)
    routes, peers = access.routes, access.peers
    h = hashlib.blake2b(f"{PROTOCOL_VERSION}|{directory.mesh_cidr}|".encode(), digest_size=32)
    h.update((directory.cards[index].key_rotation or 0).to_bytes(8, "big"))
    h.update(directory.peer_tail)
    h.update(directory.card_hashes[index : index + 1].tobytes())
    h.update(directory.card_hashes[peers].tobytes())
    h.update(directory.ids[peers].tobytes())
    h.update(b"|")
    h.update(directory.ids[routes].tobytes())
    h.update(directory.ids[shown_via[routes]].tobytes())
    h.update(np.ascontiguousarray(shown_tenths[routes], dtype=np.int64).tobytes())
    h.update(b"\x01" if access.forward else b"\x00")
    h.update(access.policy_json)
    return h.digest()


@dataclass(frozen=True)
class MapInputs:
    """Everything one node's map at one serial is rendered from (kept to diff a later map against).

    `next_row[d]` is the index of the peer carrying traffic to the node at index d (d itself when direct,
    -1 when unreachable); `tenths[d]` the path cost in tenths (-1 when unreachable). The arrays are
    private copies: nobody changes them after construction. `access` is the node's share of the policy
    in force (None: no policy, every node is a peer); with it, `forward` is the access's."""

    directory: Directory
    index: int
    next_row: npt.NDArray[np.int32]
    tenths: npt.NDArray[np.int32]
    forward: bool
    access: NodeAccess | None = None

    @property
    def peer_ids(self) -> list[int]:
        ids = self.directory.id_list
        return ids[: self.index] + ids[self.index + 1 :]


def _peer_fragments(m: MapInputs) -> list[bytes]:
    """The JSON of each peer, in index order, without the node itself."""
    directory, index, next_row = m.directory, m.index, m.next_row
    cards = directory.cards
    n = len(cards)
    positions = np.arange(n)
    via = np.where(next_row >= 0, next_row, positions)  # unreachable: try the direct link anyway
    relayed = via != positions
    relayed[index] = False
    peers = directory.direct_peers[:index] + directory.direct_peers[index + 1 :]
    if relayed.any():
        extra: dict[int, list[bytes]] = {}
        relayed_ids = np.nonzero(relayed)[0].tolist()
        for d in relayed_ids:
            extra.setdefault(int(via[d]), []).append(cards[d].host_route)
        for d in set(extra) | set(relayed_ids):
            ips = ([] if relayed[d] else [cards[d].host_route]) + extra.get(d, [])
            peers[d - (d > index)] = cards[d].peer_head + b",".join(ips) + directory.peer_tail
    return peers


def _route_fragments(m: MapInputs) -> list[bytes]:
    """The JSON of each route, in index order, without the node itself."""
    directory, index, next_row = m.directory, m.index, m.next_row
    cards = directory.cards
    positions = np.arange(len(cards))
    via = np.where(next_row >= 0, next_row, positions)
    relayed = via != positions
    relayed[index] = False
    heads = directory.direct_route_heads[:index] + directory.direct_route_heads[index + 1 :]
    for d in np.nonzero(relayed)[0].tolist():
        heads[d - (d > index)] = cards[d].route_head + b'%d,"cost":' % directory.ids[via[d]]
    costs = m.tenths.tolist()
    del costs[index]
    return list(map(_close, heads, directory.cost_texts(costs)))


def _close(head: bytes, cost: bytes) -> bytes:
    return head + cost + b"}"


def _node_json(m: MapInputs) -> bytes:
    me = m.directory.cards[m.index]
    return (
        (
            f'{{"node_id":{me.node_id},"name":{json.dumps(me.name)},"role":{json.dumps(me.role)},'
            f'"tunnel_address":{json.dumps(str(me.tunnel_address))},'
            f'"mesh_cidr":{json.dumps(str(m.directory.mesh_cidr))},'
        ).encode()
        + me.tags_json
        + b'"listen_port":%d' % me.listen_port
        + (b',"key_rotation":%d' % me.key_rotation if me.key_rotation is not None else b"")
        + b"}"
    )


# --- maps under a policy: only the peers and routes the node's access allows --------------------------


def _policy_vias(m: MapInputs) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Per position, the position carrying traffic to it, and whether that is a relay; a route the
    access does not let use a relay is direct."""
    assert m.access is not None
    positions = np.arange(len(m.directory.cards))
    via = np.where(m.next_row >= 0, m.next_row, positions).astype(np.int64)
    relayed = m.access.relayed & (via != positions)
    relayed[m.index] = False
    return np.where(relayed, via, positions), relayed


def _keyed_peers(m: MapInputs) -> list[tuple[int, bytes]]:
    """(node id, peer JSON) of every peer the access allows, in index order."""
    assert m.access is not None
    directory, cards = m.directory, m.directory.cards
    via, relayed = _policy_vias(m)
    carried: dict[int, list[bytes]] = {}
    for d in np.nonzero(relayed & m.access.routes)[0].tolist():
        carried.setdefault(int(via[d]), []).append(cards[d].host_route)
    out = []
    for k in np.nonzero(m.access.peers)[0].tolist():
        ips = ([] if relayed[k] else [cards[k].host_route]) + carried.get(k, [])
        out.append((cards[k].node_id, cards[k].peer_head + b",".join(ips) + directory.peer_tail))
    return out


def _keyed_routes(m: MapInputs) -> list[tuple[int, bytes]]:
    """(destination id, route JSON) of every route the access allows, in index order."""
    assert m.access is not None
    directory, cards = m.directory, m.directory.cards
    via, relayed = _policy_vias(m)
    out = []
    for k in np.nonzero(m.access.routes)[0].tolist():
        if relayed[k]:
            head = cards[k].route_head + b'%d,"cost":' % directory.ids[via[k]]
            tenths = int(m.tenths[k])
        else:
            head = directory.direct_route_heads[k]
            # a relayed path the policy refused says nothing about the direct link's cost
            tenths = int(m.tenths[k]) if m.next_row[k] in (k, -1) else -1
        out.append((cards[k].node_id, head + directory.cost_texts([tenths])[0] + b"}"))
    return out


def _render_policy_map(m: MapInputs, serial: int, with_kind: bool) -> bytes:
    assert m.access is not None
    return b"".join(
        (
            b'{"kind":"full","serial":%d,"node":' % serial if with_kind else b'{"serial":%d,"node":' % serial,
            _node_json(m),
            b',"peers":[',
            b",".join(f for _, f in _keyed_peers(m)),
            b'],"routes":[',
            b",".join(f for _, f in _keyed_routes(m)),
            b'],"forward":',
            b"true" if m.access.forward else b"false",
            b',"policy":',
            m.access.policy_json,
            b',"protocol_version":%d}' % PROTOCOL_VERSION,
        )
    )


def _keyed(m: MapInputs) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
    """Peers and routes of any map, keyed by node id (the generic way to diff two maps)."""
    if m.access is not None:
        return _keyed_peers(m), _keyed_routes(m)
    peer_ids = m.peer_ids
    return list(zip(peer_ids, _peer_fragments(m), strict=True)), list(
        zip(peer_ids, _route_fragments(m), strict=True)
    )


def _render_keyed_delta(old: MapInputs, new: MapInputs, base_serial: int, serial: int) -> bytes:
    """A delta found by comparing the two maps' fragments by id (used when a policy is in force in
    either map: its peer and route sets then differ per node)."""
    old_peers, old_routes = (dict(x) for x in _keyed(old))
    new_peers, new_routes = _keyed(new)
    forward = new.access.forward if new.access is not None else new.forward
    new_peer_ids = {k for k, _ in new_peers}
    new_route_ids = {k for k, _ in new_routes}
    return b"".join(
        (
            b'{"kind":"delta","serial":%d,"base_serial":%d,"node":' % (serial, base_serial),
            _node_json(new),
            b',"forward":',
            b"true" if forward else b"false",
            b',"policy":',
            new.access.policy_json if new.access is not None else b"null",
            b',"peers_upserted":[',
            b",".join(f for k, f in new_peers if old_peers.get(k) != f),
            b'],"peers_removed":',
            json.dumps(sorted(old_peers.keys() - new_peer_ids)).encode(),
            b',"routes_upserted":[',
            b",".join(f for k, f in new_routes if old_routes.get(k) != f),
            b'],"routes_removed":',
            json.dumps(sorted(old_routes.keys() - new_route_ids)).encode(),
            b',"protocol_version":%d}' % PROTOCOL_VERSION,
        )
    )


def render_map(m: MapInputs, serial: int, with_kind: bool = False) -> bytes:
    """The JSON of `wire.models.NetMap` at `serial`; `with_kind` adds `"kind":"full"` (answers to delta
    polls), otherwise the bytes are exactly those of protocol version 1 before deltas."""
    if m.access is not None:
        return _render_policy_map(m, serial, with_kind)
    return b"".join(
        (
            b'{"kind":"full","serial":%d,"node":' % serial if with_kind else b'{"serial":%d,"node":' % serial,
            _node_json(m),
            b',"peers":[',
            b",".join(_peer_fragments(m)),
            b'],"routes":[',
            b",".join(_route_fragments(m)),
            b'],"forward":',
            b"true" if m.forward else b"false",
            b',"protocol_version":%d}' % PROTOCOL_VERSION,
        )
    )


def render_netmap(
    directory: Directory,
    index: int,
    serial: int,
    next_row: npt.NDArray[np.int32],
    tenths: npt.NDArray[np.int64],
    forward: bool,
) -> bytes:
    """The JSON of `wire.models.NetMap` for the node at `index` (see MapInputs for the arrays)."""
    return render_map(MapInputs(directory, index, next_row, tenths.astype(np.int32), forward), serial)


def _vias(m: MapInputs) -> npt.NDArray[np.int64]:
    """Per position, the position of the peer carrying traffic to it (itself: direct or unreachable)."""
    positions = np.arange(len(m.directory.cards))
    via = np.where(m.next_row >= 0, m.next_row, positions).astype(np.int64)
    via[m.index] = m.index
    return via


# Above this many changed peers a delta renders the whole peer list and picks from it.
_FEW_PEERS = 32


def render_delta(old: MapInputs, new: MapInputs, base_serial: int, serial: int) -> bytes:
    """The JSON of `wire.models.NetMapDelta` turning the map rendered from `old` at `base_serial` into
    the one rendered from `new` at `serial`: exactly what `wire.delta.netmap_delta` of the two maps
    gives, found on the arrays without rendering either map.

    A peer's JSON changes when its card does, or when the set of destinations it carries does (its own
    /32 when direct, plus every destination relayed through it); a route's when its card, its via or
    its cost does."""
    if old.access is not None or new.access is not None:
        return _render_keyed_delta(old, new, base_serial, serial)
    d_old, d_new = old.directory, new.directory
    match = d_new.match(d_old)
    ids = d_new.ids
    via_old, via_new = _vias(old), _vias(new)
    vid_old, vid_new = d_old.ids[via_old], ids[via_new]  # via as node ids
    present = match.old_pos >= 0
    at = np.where(present, match.old_pos, 0)
    was_vid = np.where(present, vid_old[at], -1)  # per new position: its via in the old map
    direct_new = vid_new == ids
    direct_was = was_vid == ids
    moved = present & (was_vid != vid_new)
    gone = match.gone
    carriers = np.concatenate(
        (
            was_vid[moved & ~direct_was],  # lost a relayed destination
            vid_new[moved & ~direct_new],  # gained one
            vid_new[~present & ~direct_new],  # a new node relayed through it
            vid_old[gone][vid_old[gone] != d_old.ids[gone]],  # a removed node was relayed through it
            vid_new[~match.same_host & ~direct_new],  # a relayed destination's address changed
        )
    )
    peer_changed = ~present | ~match.same_peer | np.isin(ids, carriers) | (moved & (direct_new != direct_was))
    if not match.same_tail:
        peer_changed[:] = True
    peer_changed[new.index] = False
    route_changed = ~present | ~match.same_route | moved | (present & (old.tenths[at] != new.tenths))
    route_changed[new.index] = False

    cards = d_new.cards
    changed = np.nonzero(peer_changed)[0].tolist()
    if len(changed) > _FEW_PEERS:
        every = _peer_fragments(new)
        peers = [every[k - (k > new.index)] for k in changed]
    else:
        peers = []
        for k in changed:
            extra = np.nonzero(via_new == k)[0].tolist()
            ips = [cards[x].host_route for x in extra if x != k]
            if direct_new[k]:
                ips.insert(0, cards[k].host_route)
            peers.append(cards[k].peer_head + b",".join(ips) + d_new.peer_tail)
    routes = []
    for k in np.nonzero(route_changed)[0].tolist():
        head = (
            d_new.direct_route_heads[k] if direct_new[k] else cards[k].route_head + b'%d,"cost":' % vid_new[k]
        )
        routes.append(head + d_new.cost_texts([int(new.tenths[k])])[0] + b"}")
    removed = json.dumps(match.removed).encode()
    return b"".join(
        (
            b'{"kind":"delta","serial":%d,"base_serial":%d,"node":' % (serial, base_serial),
            _node_json(new),
            b',"forward":',
            b"true" if new.forward else b"false",
            b',"peers_upserted":[',
            b",".join(peers),
            b'],"peers_removed":',
            removed,
            b',"routes_upserted":[',
            b",".join(routes),
            b'],"routes_removed":',
            removed,
            b',"protocol_version":%d}' % PROTOCOL_VERSION,
        )
    )
