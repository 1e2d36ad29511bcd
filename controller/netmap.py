"""Network maps: one node's `wire.models.NetMap`, rendered as JSON bytes, and its content digest.

A map is a pure function of (the directory of node cards in routing order, the node's row of next hops
and path costs, its forward flag, the mesh CIDR, the keepalive). `map_digest` hashes those inputs
except the path costs: two maps are equal iff their digests are (up to hash collisions) as far as
peers, addresses, next hops and rules go, and the controller compares digests to decide whether a
node's map really changed, without rendering a map nobody asked for. A map's route costs are what
they were when its serial was made (shown, never acted on): a cost that moves alone makes no new map,
so RTT noise never rewrites every host's map.

Rules:
- Every other node appears as a peer, with its endpoints, so WireGuard keeps trying the direct link
  (a handshake newer than the failure is what brings a link back).
- A destination D reached through relay R: D's /32 is in R's allowed IPs and NOT in D's own peer
  entry (an allowed IP belongs to one peer only). An unreachable destination keeps its own /32.
- One encoder: every JSON fragment comes from the wire models. Each card's peer, route and self
  parts are rendered once by `Peer` / `Route` / `SelfNode` themselves (`model_dump_json`) and cached on
  the card; the objects around them (`NetMap`, `NetMapDelta`) are assembled by `JsonTemplate` from the
  model's own field list, names, defaults and omission rules. A map is mostly a join of cached parts,
  which is what makes pushing thousands of maps cheap, and it is byte for byte the model's own
  serialization (property-tested), so a field added to the wire cannot be missed here.
- One relay-fragment builder (`_peer_json`: a peer's allowed IPs are its own address when direct plus
  the destinations relayed through it) and one route builder (`_route_json`) serve full maps, deltas and
  maps under a policy; costs are shown by the one tenths rule (controller.routing.cost_tenths, as `tenths_json` writes it).
- A delta (`render_delta`) compares the fragments of two maps of one node by node id: a peer or route
  whose JSON differs is sent whole, an id only in the old map is removed. It is therefore exactly
  `wire.delta.netmap_delta` of the two maps, without parsing either. Between two compact rows
  (`MapInputs`: a full mesh's maps) only the positions that can differ are looked at — the cards the
  directory changed and the rows' few odd destinations — so a join costs each agent's delta O(1).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import struct
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, TypeAdapter

from keys.types import IdentityPublicKey, WireGuardPublicKey
from wire import PROTOCOL_VERSION
from wire.models import IPAddress, IPNetwork, NetMap, NetMapDelta, Peer, Route, SelfNode

if TYPE_CHECKING:
    from controller.access import NodeAccess

DEFAULT_KEEPALIVE_S = 25
COMPACT_ODD = 64
"""A kept map's routing row with at most this many destinations off the common case stays compact."""

# --- the encoder: wire models' JSON from parts the models rendered -----------------------------------


class JsonTemplate:
    """A wire model's JSON object assembled from field values already rendered as JSON: the field
    names, their order, the JSON of the defaults of fields not given, and which fields the wire form
    leaves out (`exclude_if`) all come from the model."""

    def __init__(self, model: type[BaseModel]) -> None:
        self.model = model
        self.fields: list[tuple[str, bytes, bytes | None]] = []  # name, '"name":', default JSON (None: none)
        for name, info in model.model_fields.items():
            default: bytes | None = None
            if not info.is_required():
                value = info.get_default(call_default_factory=True)
                if info.exclude_if is None or not info.exclude_if(value):
                    assert info.annotation is not None
                    default = TypeAdapter(info.annotation).dump_json(value)
            self.fields.append((name, b'"%s":' % name.encode(), default))
        self.names = {name for name, _, _ in self.fields}

    def render(self, parts: dict[str, bytes], leave_out: frozenset[str] = frozenset()) -> bytes:
        """The object with `parts` (field -> its JSON; a field the model leaves out when empty is given
        only when it is not) and every other field's default, minus `leave_out`."""
        out = []
        for name, key, default in self.fields:
            value = parts.get(name, default)
            if value is not None and name not in leave_out:
                out.append(key + value)
        return b"{" + b",".join(out) + b"}"


_NETMAP = JsonTemplate(NetMap)
_DELTA = JsonTemplate(NetMapDelta)
_NETWORK: TypeAdapter[IPNetwork] = TypeAdapter(IPNetwork)
_IDS: TypeAdapter[list[int]] = TypeAdapter(list[int])
_TRUE, _FALSE = b"true", b"false"
_NO_KIND = frozenset({"kind"})


def _holes(text: bytes, *holes: bytes) -> list[bytes]:
    """`text` cut at each of `holes` in turn (each must follow the previous one)."""
    parts = []
    for hole in holes:
        before, found, text = text.partition(hole)
        if not found:
            raise AssertionError(f"the wire form changed: {hole!r} not found")
        parts.append(before)
    return [*parts, text]


def _route_frame() -> tuple[bytes, bytes]:
    """What follows a route's `via` value up to its cost, and after the cost, as `Route` renders it."""
    sample = Route.model_construct(
        destination=7, destination_address=ipaddress.ip_address("10.0.0.7"), via=919191, cost=None
    ).model_dump_json()
    _, mid, end = _holes(sample.encode(), b"919191", b"null")
    return mid, end


_ROUTE_MID, _ROUTE_END = _route_frame()


@functools.lru_cache(maxsize=4096)
def tenths_json(tenths: int) -> bytes:
    """A cost in tenths as the model renders the float (`31.2`, `30.0`), -1 as `null`."""
    return b"null" if tenths < 0 else b"%d.%d" % divmod(tenths, 10)


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

    @functools.cached_property
    def host_route(self) -> bytes:
        """The node's own tunnel address as a one-address network, as `Peer.allowed_ips` renders it."""
        return _NETWORK.dump_json(ipaddress.ip_network(self.tunnel_address))

    @functools.cached_property
    def _peer_parts(self) -> dict[int | None, tuple[bytes, bytes]]:
        return {}

    def peer_parts(self, keepalive_s: int | None) -> tuple[bytes, bytes]:
        """This card's `Peer` JSON cut where its allowed IPs go: (up to `[`, from `]` on)."""
        parts = self._peer_parts.get(keepalive_s)
        if parts is None:
            text = Peer.model_construct(
                node_id=self.node_id,
                name=self.name,
                role=self.role,
                wg_public_key=WireGuardPublicKey.from_base64(self.wg_public_key),
                identity_public_key=IdentityPublicKey.from_base64(self.identity_public_key),
                tunnel_address=self.tunnel_address,
                endpoints=list(self.endpoints),
                allowed_ips=[],
                persistent_keepalive=keepalive_s,
                tags=list(self.tags),
            ).model_dump_json()
            head, tail = _holes(text.encode(), b'"allowed_ips":[')
            parts = self._peer_parts[keepalive_s] = (head + b'"allowed_ips":[', tail)
        return parts

    def direct_peer(self, keepalive_s: int | None) -> bytes:
        """This card's `Peer` JSON when its allowed IPs are its own address alone (the usual case)."""
        head, tail = self.peer_parts(keepalive_s)
        return head + self.host_route + tail

    @functools.cached_property
    def route_head(self) -> bytes:
        """A `Route` to this node up to its `via` value."""
        text = Route.model_construct(
            destination=self.node_id, destination_address=self.tunnel_address, via=919191, cost=None
        ).model_dump_json()
        return _holes(text.encode(), b"919191")[0]

    @functools.cached_property
    def direct_route_head(self) -> bytes:
        """A direct `Route` to this node up to its cost."""
        return self.route_head + b"%d" % self.node_id + _ROUTE_MID

    @functools.cached_property
    def _self_json(self) -> dict[str, bytes]:
        return {}

    def self_json(self, mesh_cidr: IPNetwork) -> bytes:
        """This node's `SelfNode` JSON (the `node` of its own map)."""
        key = str(mesh_cidr)
        text = self._self_json.get(key)
        if text is None:
            text = self._self_json[key] = (
                SelfNode.model_construct(
                    node_id=self.node_id,
                    name=self.name,
                    role=self.role,
                    tunnel_address=self.tunnel_address,
                    mesh_cidr=mesh_cidr,
                    listen_port=self.listen_port,
                    key_rotation=self.key_rotation,
                    tags=list(self.tags),
                )
                .model_dump_json()
                .encode()
            )
        return text

    @functools.cached_property
    def digest_part(self) -> bytes:
        """Everything a peer's map shows of this card, for digests."""
        return self.direct_peer(None) + self.route_head + b"|%d" % self.listen_port


@dataclass(frozen=True)
class CardMatch:
    """The cards of a newer directory against an older one's, per position in the newer one."""

    old_pos: npt.NDArray[np.int64]  # the same node's position in the older directory; -1: a new node
    removed: list[int]  # ids only in the older directory, ascending
    gone: npt.NDArray[np.int64]  # their positions in the older directory
    same_peer: npt.NDArray[np.bool_]  # the node's peer JSON (but its allowed IPs) is unchanged
    same_route: npt.NDArray[np.bool_]  # the node's route JSON head is unchanged
    same_host: npt.NDArray[np.bool_]  # the node's host route (its /32 in a relay's allowed IPs) is unchanged
    same_tail: bool  # keepalive and mesh CIDR unchanged
    new_pos: npt.NDArray[np.int64]  # per position in the older directory, the node's in the newer; -1: gone
    changed: npt.NDArray[np.int64]  # newer positions whose card is new or shows anything differently


class NodeCards:
    """The node cards in routing-index order, the shared parts of every map, and their digest."""

    def __init__(self, cards: Sequence[NodeCard], mesh_cidr: IPNetwork, keepalive_s: int | None) -> None:
        self.cards = list(cards)
        self.mesh_cidr = mesh_cidr
        self.keepalive_s = keepalive_s
        self.ids = np.array([c.node_id for c in self.cards], dtype=np.int64)
        self.id_list = [c.node_id for c in self.cards]
        self.direct_peers = [c.direct_peer(keepalive_s) for c in self.cards]
        self.direct_route_heads = [c.direct_route_head for c in self.cards]
        self.position = {node_id: p for p, node_id in enumerate(self.id_list)}
        # Held weakly: a directory that kept the older ones it was matched against alive kept every
        # directory the controller ever made (each the next one's older: ~4 MB a change at 5,000 nodes).
        self._matches: weakref.WeakKeyDictionary[NodeCards, CardMatch] = weakref.WeakKeyDictionary()
        keepalive = "null" if keepalive_s is None else str(int(keepalive_s))
        self.peer_tail = keepalive.encode()  # what the digests know of the shared tail of every peer
        h = hashlib.blake2b(digest_size=32)
        h.update(f"{PROTOCOL_VERSION}|{mesh_cidr}|{keepalive}|".encode())
        for c in self.cards:
            h.update(c.digest_part)
            h.update(b"\n")
        self.digest = h.digest()

    @functools.cached_property
    def card_hashes(self) -> npt.NDArray[np.uint64]:
        """Per card, a 64-bit hash of everything a map shows of it (maps under a policy digest these)."""
        return np.array(
            [
                int.from_bytes(hashlib.blake2b(c.digest_part, digest_size=8).digest(), "big")
                for c in self.cards
            ],
            dtype=np.uint64,
        )

    def match(self, older: NodeCards) -> CardMatch:
        """How this directory's cards line up with those of `older` (cached: maps of many nodes are
        diffed between the same two directories)."""
        cached = self._matches.get(older)
        if cached is not None:
            return cached
        where = older.position
        old_pos = np.array([where.get(node_id, -1) for node_id in self.id_list], dtype=np.int64)
        same_peer = np.zeros(len(self.cards), dtype=bool)
        same_route = np.zeros(len(self.cards), dtype=bool)
        same_host = np.zeros(len(self.cards), dtype=bool)
        keepalive = self.keepalive_s
        for k, (card, p) in enumerate(zip(self.cards, old_pos.tolist(), strict=True)):
            if p >= 0:
                was = older.cards[p]
                same = was is card
                same_peer[k] = same or was.peer_parts(keepalive) == card.peer_parts(keepalive)
                same_route[k] = same or was.route_head == card.route_head
                same_host[k] = same or was.host_route == card.host_route
        kept = set(self.id_list)
        present = old_pos >= 0
        new_pos = np.full(len(older.cards), -1, dtype=np.int64)
        new_pos[old_pos[present]] = np.flatnonzero(present)
        match = CardMatch(
            old_pos=old_pos,
            removed=sorted(i for i in older.id_list if i not in kept),
            gone=np.array([p for p, i in enumerate(older.id_list) if i not in kept], dtype=np.int64),
            same_peer=same_peer,
            same_route=same_route,
            same_host=same_host,
            same_tail=older.keepalive_s == self.keepalive_s and older.mesh_cidr == self.mesh_cidr,
            new_pos=new_pos,
            changed=np.flatnonzero(~present | ~same_peer | ~same_route | ~same_host),
        )
        if len(self._matches) >= 8:
            self._matches.pop(next(iter(self._matches)))
        self._matches[older] = match
        return match


def _peer_json(directory: NodeCards, k: int, direct: bool, carried: Sequence[int]) -> bytes:
    """The one relay-fragment builder: the peer at position k, its allowed IPs being its own address
    when the node reaches it directly plus the addresses of the destinations relayed through it."""
    if direct and not carried:
        return directory.direct_peers[k]
    cards = directory.cards
    head, tail = cards[k].peer_parts(directory.keepalive_s)
    ips = ([cards[k].host_route] if direct else []) + [cards[d].host_route for d in carried]
    return head + b",".join(ips) + tail


def _route_json(directory: NodeCards, d: int, via: int, tenths: int) -> bytes:
    """The route to the node at position d through the peer at position `via` (d: direct)."""
    card = directory.cards[d]
    head = (
        card.direct_route_head if via == d else card.route_head + b"%d" % directory.id_list[via] + _ROUTE_MID
    )
    return head + tenths_json(tenths) + _ROUTE_END


def map_digest(m: MapInputs) -> bytes:
    """Digest of everything `render_map` puts in this node's map except the serial and the route
    costs: of the costs only whether each is shown counts (a cost is hidden where the route is
    unreachable, and then the next hop says so). It reads the row's detours only: a direct full mesh
    costs O(1) per node beyond the directory's digest."""
    if m.access is not None:
        return _policy_digest(m.directory, m.index, m.next_row, m.tenths.astype(np.int64), m.access)
    directory, index = m.directory, m.index
    where, via = m.detours()
    h = hashlib.blake2b(directory.digest, digest_size=32)
    h.update(index.to_bytes(4, "big"))
    h.update((directory.cards[index].key_rotation or 0).to_bytes(8, "big"))
    h.update(struct.pack(f">{len(where)}i", *where))
    h.update(b"|")
    h.update(struct.pack(f">{len(via)}i", *via))
    h.update(b"\x01" if m.forward else b"\x00")
    return h.digest()


def _policy_digest(
    directory: NodeCards,
    index: int,
    next_row: npt.NDArray[np.int32],
    tenths: npt.NDArray[np.int64],
    access: NodeAccess,
) -> bytes:
    """The digest of a map under a policy: of only what the map shows (its own card, the cards of its
    peers, its routes by node id and whether each has a cost), so a change elsewhere in the mesh leaves
    it alone; cost values are left out as in `map_digest`."""
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
    h.update(np.ascontiguousarray(shown_tenths[routes] >= 0).tobytes())
    h.update(b"\x01" if access.forward else b"\x00")
    h.update(access.policy_json)
    return h.digest()


CompactRow = tuple[int, dict[int, tuple[int, int]] | None]
"""A routing row as `MapInputs` keeps it: (common cost, odd position -> (next hop, cost)); None: the
row has too many odd positions to keep compact."""
_SAMPLES = 9


def compact_rows(rows: npt.NDArray[np.int32], tenths: npt.NDArray[np.int32]) -> list[CompactRow]:
    """The compact form of each row of a block (one numpy pass over the block). The common cost is
    the median of a few sampled direct destinations' costs: any value is correct, the usual one keeps
    the row small."""
    k, n = rows.shape
    positions = np.arange(n, dtype=np.int32)
    direct = rows == positions[None, :]
    cols = np.unique(np.linspace(0, max(n - 1, 0), _SAMPLES).astype(np.int64)) if n else positions
    sampled = np.where(direct[:, cols] & (tenths[:, cols] >= 0), tenths[:, cols], np.iinfo(np.int32).max)
    sampled.sort(axis=1)
    valid = (sampled < np.iinfo(np.int32).max).sum(axis=1)
    common = sampled[np.arange(k), valid // 2]
    common = np.where(valid > 0, common, 0).astype(np.int32)
    odd = ~direct | (tenths != common[:, None])
    counts = odd.sum(axis=1)
    small = counts <= COMPACT_ODD
    r, c = np.nonzero(odd & small[:, None])
    vias, costs = rows[r, c].tolist(), tenths[r, c].tolist()
    cols_list = c.tolist()
    out: list[CompactRow] = []
    start = 0
    for value, count, fits in zip(common.tolist(), counts.tolist(), small.tolist(), strict=True):
        if not fits:
            out.append((value, None))
            continue
        end = start + count
        out.append(
            (
                value,
                dict(
                    zip(
                        cols_list[start:end], zip(vias[start:end], costs[start:end], strict=True), strict=True
                    )
                ),
            )
        )
        start = end
    return out


class MapInputs:
    """Everything one node's map at one serial is rendered from (kept to diff a later map against).

    Given as arrays over the directory's positions: `next_row[d]` is the index of the peer carrying
    traffic to the node at index d (d itself when direct, -1 when unreachable); `tenths[d]` the path
    cost in tenths (-1 when unreachable). `access` is the node's share of the policy in force (None: no
    policy, every node is a peer); with it, `forward` is the access's.

    Kept compact (nothing else holds a map's routing row, and each node keeps a few): the destinations
    reached directly at the row's most common cost (`common`) are not stored, the others are (`odd`:
    position -> (next hop, cost)), so a direct full mesh costs a few hundred bytes per kept map and a
    delta between two such maps is found from their odd positions and the directory's changed cards.
    A row with more than COMPACT_ODD odd positions is kept whole (`odd` None). Nobody changes them."""

    __slots__ = ("_dense", "access", "common", "directory", "forward", "index", "odd")

    def __init__(
        self,
        directory: NodeCards,
        index: int,
        next_row: npt.NDArray[np.int32],
        tenths: npt.NDArray[np.int32],
        forward: bool,
        access: NodeAccess | None = None,
        row: CompactRow | None = None,
    ) -> None:
        """`row`: the compact form of (next_row, tenths) when the caller made it (`compact_rows`)."""
        self.directory = directory
        self.index = index
        self.forward = forward
        self.access = access
        if row is None:
            row = compact_rows(next_row[None, :], tenths[None, :])[0]
        self.common, self.odd = row[0], row[1]
        self._dense: tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]] | None = None
        if self.odd is None:
            self._dense = (
                np.array(next_row, dtype=np.int32, copy=True),
                np.array(tenths, dtype=np.int32, copy=True),
            )

    @classmethod
    def of_row(cls, directory: NodeCards, index: int, row: CompactRow, forward: bool) -> MapInputs:
        """The inputs of a map without a policy, from its row in compact form (`row[1]` not None)."""
        m = cls.__new__(cls)
        m.directory, m.index, m.forward, m.access = directory, index, forward, None
        m.common, m.odd = row
        m._dense = None
        return m

    @property
    def next_row(self) -> npt.NDArray[np.int32]:
        if self._dense is not None:
            return self._dense[0]
        assert self.odd is not None
        row = np.arange(len(self.directory.cards), dtype=np.int32)
        for p, (via, _) in self.odd.items():
            row[p] = via
        return row

    @property
    def tenths(self) -> npt.NDArray[np.int32]:
        if self._dense is not None:
            return self._dense[1]
        assert self.odd is not None
        row = np.full(len(self.directory.cards), self.common, dtype=np.int32)
        for p, (_, tenths) in self.odd.items():
            row[p] = tenths
        return row

    def detours(self) -> tuple[list[int], list[int]]:
        """(positions not reached directly, their next hop or -1), ascending: the row's shape."""
        if self.odd is None:
            row = self.next_row
            where = np.flatnonzero(row != np.arange(len(row)))
            return where.tolist(), row[where].tolist()
        pairs = sorted((p, via) for p, (via, _) in self.odd.items() if via != p)
        return [p for p, _ in pairs], [v for _, v in pairs]

    def via(self, p: int) -> int:
        """The position carrying traffic to position p (compact rows), as `_relays` says: an
        unreachable destination and the node itself are tried directly."""
        assert self.odd is not None
        entry = self.odd.get(p)
        if entry is None or p == self.index or entry[0] < 0:
            return p
        return entry[0]

    def tenths_at(self, p: int) -> int:
        assert self.odd is not None
        entry = self.odd.get(p)
        return self.common if entry is None else entry[1]

    @property
    def peer_ids(self) -> list[int]:
        ids = self.directory.id_list
        return ids[: self.index] + ids[self.index + 1 :]


def _relays(
    m: MapInputs, via: npt.NDArray[np.int64] | None = None
) -> tuple[npt.NDArray[np.int64], dict[int, list[int]]]:
    """Per position the position carrying traffic to it (itself: direct, or unreachable and tried
    directly anyway), and per carrying peer the destinations relayed through it, ascending."""
    if via is None:
        positions = np.arange(len(m.directory.cards))
        via = np.where(m.next_row >= 0, m.next_row, positions).astype(np.int64)
        via[m.index] = m.index
    carried: dict[int, list[int]] = {}
    relayed = np.flatnonzero(via != np.arange(len(via)))
    for d, k in zip(relayed.tolist(), via[relayed].tolist(), strict=True):
        carried.setdefault(k, []).append(d)
    return via, carried


def _peer_fragments(m: MapInputs) -> list[bytes]:
    """The JSON of each peer, in index order, without the node itself."""
    directory, index = m.directory, m.index
    via, carried = _relays(m)
    peers = directory.direct_peers[:index] + directory.direct_peers[index + 1 :]
    for d in {*carried, *(x for xs in carried.values() for x in xs)}:
        peers[d - (d > index)] = _peer_json(directory, d, bool(via[d] == d), carried.get(d, ()))
    return peers


def _route_fragments(m: MapInputs) -> list[bytes]:
    """The JSON of each route, in index order, without the node itself."""
    directory, index = m.directory, m.index
    via, _ = _relays(m)
    tenths = m.tenths.tolist()
    heads = directory.direct_route_heads.copy()
    for d in np.flatnonzero(via != np.arange(len(via))).tolist():
        heads[d] = directory.cards[d].route_head + b"%d" % directory.id_list[int(via[d])] + _ROUTE_MID
    del heads[index], tenths[index]
    return list(map(bytes.__add__, heads, map(_cost_end, tenths)))


@functools.lru_cache(maxsize=4096)
def _cost_end(tenths: int) -> bytes:
    """What follows a route's `"cost":`: the cost and the end of the route."""
    return tenths_json(tenths) + _ROUTE_END


def _node_json(m: MapInputs) -> bytes:
    return m.directory.cards[m.index].self_json(m.directory.mesh_cidr)


def _list(fragments: Sequence[bytes]) -> bytes:
    return b"[" + b",".join(fragments) + b"]"


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
    directory = m.directory
    via, relayed = _policy_vias(m)
    _, carried = _relays(m, np.where(relayed & m.access.routes, via, np.arange(len(via))))
    return [
        (directory.id_list[k], _peer_json(directory, k, not relayed[k], carried.get(k, ())))
        for k in np.flatnonzero(m.access.peers).tolist()
    ]


def _keyed_routes(m: MapInputs) -> list[tuple[int, bytes]]:
    """(destination id, route JSON) of every route the access allows, in index order."""
    assert m.access is not None
    directory = m.directory
    via, relayed = _policy_vias(m)
    out = []
    for k in np.flatnonzero(m.access.routes).tolist():
        # a relayed path the policy refused says nothing about the direct link's cost
        tenths = int(m.tenths[k]) if relayed[k] or m.next_row[k] in (k, -1) else -1
        out.append((directory.id_list[k], _route_json(directory, k, int(via[k]), tenths)))
    return out


def _keyed(m: MapInputs) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
    """Peers and routes of any map, keyed by node id (the generic way to diff two maps)."""
    if m.access is not None:
        return _keyed_peers(m), _keyed_routes(m)
    peer_ids = m.peer_ids
    return list(zip(peer_ids, _peer_fragments(m), strict=True)), list(
        zip(peer_ids, _route_fragments(m), strict=True)
    )


def _forward(m: MapInputs) -> bytes:
    forward = m.access.forward if m.access is not None else m.forward
    return _TRUE if forward else _FALSE


def _policy_part(m: MapInputs) -> dict[str, bytes]:
    return {} if m.access is None else {"policy": m.access.policy_json}


def _render_keyed_delta(old: MapInputs, new: MapInputs, base_serial: int, serial: int) -> bytes:
    """A delta found by comparing the two maps' fragments by id (used when a policy is in force in
    either map: its peer and route sets then differ per node)."""
    old_peers, old_routes = (dict(x) for x in _keyed(old))
    new_peers, new_routes = _keyed(new)
    new_peer_ids = {k for k, _ in new_peers}
    new_route_ids = {k for k, _ in new_routes}
    return _delta_json(
        new,
        base_serial,
        serial,
        [f for k, f in new_peers if old_peers.get(k) != f],
        sorted(old_peers.keys() - new_peer_ids),
        [f for k, f in new_routes if old_routes.get(k) != f],
        sorted(old_routes.keys() - new_route_ids),
    )


def _delta_json(
    new: MapInputs,
    base_serial: int,
    serial: int,
    peers: list[bytes],
    peers_removed: list[int],
    routes: list[bytes],
    routes_removed: list[int],
) -> bytes:
    """A `NetMapDelta` to the map rendered from `new`, from the changed fragments and removed ids."""
    return _DELTA.render(
        {
            "kind": b'"delta"',
            "serial": b"%d" % serial,
            "base_serial": b"%d" % base_serial,
            "node": _node_json(new),
            "forward": _forward(new),
            **_policy_part(new),
            "peers_upserted": _list(peers),
            "peers_removed": _IDS.dump_json(peers_removed),
            "routes_upserted": _list(routes),
            "routes_removed": _IDS.dump_json(routes_removed),
        }
    )


def render_map(m: MapInputs, serial: int, with_kind: bool = False) -> bytes:
    """The JSON of `wire.models.NetMap` at `serial`; `with_kind` adds `"kind":"full"` (answers to delta
    polls), otherwise the bytes are those a client of protocol version 1 before deltas reads."""
    if m.access is not None:
        peers = [f for _, f in _keyed_peers(m)]
        routes = [f for _, f in _keyed_routes(m)]
    else:
        peers, routes = _peer_fragments(m), _route_fragments(m)
    parts = {
        "serial": b"%d" % serial,
        "node": _node_json(m),
        "peers": _list(peers),
        "routes": _list(routes),
        "forward": _forward(m),
        **_policy_part(m),
    }
    return _NETMAP.render(parts, frozenset() if with_kind else _NO_KIND)


def render_netmap(
    directory: NodeCards,
    index: int,
    serial: int,
    next_row: npt.NDArray[np.int32],
    tenths: npt.NDArray[np.int64],
    forward: bool,
) -> bytes:
    """The JSON of `wire.models.NetMap` for the node at `index` (see MapInputs for the arrays)."""
    return render_map(MapInputs(directory, index, next_row, tenths.astype(np.int32), forward), serial)


def render_delta(old: MapInputs, new: MapInputs, base_serial: int, serial: int) -> bytes:
    """The JSON of `wire.models.NetMapDelta` turning the map rendered from `old` at `base_serial` into
    the one rendered from `new` at `serial`: exactly what `wire.delta.netmap_delta` of the two maps
    gives, found on the arrays without rendering either map.

    A peer's JSON changes when its card does, or when the set of destinations it carries does (its own
    /32 when direct, plus every destination relayed through it); a route's when its card, its via or
    its cost does."""
    if old.access is not None or new.access is not None:
        return _render_keyed_delta(old, new, base_serial, serial)
    sparse = _sparse_delta(old, new, base_serial, serial)
    if sparse is not None:
        return sparse
    d_old, d_new = old.directory, new.directory
    match = d_new.match(d_old)
    ids = d_new.ids
    via_old, _ = _relays(old)
    via_new, carried = _relays(new)
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
    peer_changed = ~present | ~match.same_peer | (moved & (direct_new != direct_was))
    if len(carriers):
        peer_changed |= np.isin(ids, carriers)
    if not match.same_tail:
        peer_changed[:] = True
    peer_changed[new.index] = False
    route_changed = ~present | ~match.same_route | moved | (present & (old.tenths[at] != new.tenths))
    route_changed[new.index] = False
    peers = [
        _peer_json(d_new, k, bool(direct_new[k]), carried.get(k, ()))
        for k in np.flatnonzero(peer_changed).tolist()
    ]
    routes = [
        _route_json(d_new, k, int(via_new[k]), int(new.tenths[k]))
        for k in np.flatnonzero(route_changed).tolist()
    ]
    return _delta_json(new, base_serial, serial, peers, match.removed, routes, match.removed)


def _sparse_delta(old: MapInputs, new: MapInputs, base_serial: int, serial: int) -> bytes | None:
    """`render_delta` of two compact rows with the same common cost, on the positions where anything
    may differ only (the directory's changed cards, either row's odd positions, and the peers carrying
    relayed destinations among them): O(what changed) per node. None: not such a pair."""
    if old.odd is None or new.odd is None or old.common != new.common:
        return None
    d_old, d_new = old.directory, new.directory
    match = d_new.match(d_old)
    if not match.same_tail:
        return None
    ids, old_ids = d_new.id_list, d_old.id_list
    old_pos, new_pos = match.old_pos, match.new_pos
    spots = set(match.changed.tolist()) | new.odd.keys()
    spots.update(q for q in (int(new_pos[p]) for p in old.odd) if q >= 0)
    peer_spots: set[int] = set()
    route_spots: list[int] = []
    carriers: set[int] = set()  # node ids
    same_peer, same_route, same_host = match.same_peer, match.same_route, match.same_host
    for s in sorted(spots):
        sid = ids[s]
        at = int(old_pos[s])
        present = at >= 0
        vid_new = ids[new.via(s)]
        vid_was = old_ids[old.via(at)] if present else -1
        direct_new, direct_was = vid_new == sid, vid_was == sid
        moved = present and vid_was != vid_new
        if moved and not direct_was:
            carriers.add(vid_was)  # lost a relayed destination
        if not direct_new and (moved or not present or not same_host[s]):
            carriers.add(vid_new)  # gained one, or one of its destinations is new or moved address
        if not present or not same_peer[s] or (moved and direct_new != direct_was):
            peer_spots.add(s)
        if not present or not same_route[s] or moved or old.tenths_at(at) != new.tenths_at(s):
            route_spots.append(s)
    for g in match.gone.tolist():
        v = old.via(g)
        if v != g:
            carriers.add(old_ids[v])  # a removed node was relayed through it
    position = d_new.position
    peer_spots.update(position[c] for c in carriers if c in position)
    peer_spots.discard(new.index)
    carried: dict[int, list[int]] = {}
    for p in sorted(new.odd):
        v = new.via(p)
        if v != p:
            carried.setdefault(v, []).append(p)
    peers = [_peer_json(d_new, k, new.via(k) == k, carried.get(k, ())) for k in sorted(peer_spots)]
    routes = [_route_json(d_new, k, new.via(k), new.tenths_at(k)) for k in route_spots if k != new.index]
    return _delta_json(new, base_serial, serial, peers, match.removed, routes, match.removed)
