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

import numpy as np
import numpy.typing as npt

from wire import PROTOCOL_VERSION
from wire.models import IPAddress, IPNetwork

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

    @cached_property
    def host_route(self) -> bytes:
        """The node's own tunnel address as a one-address network, JSON-quoted."""
        return json.dumps(f"{self.tunnel_address}/{self.tunnel_address.max_prefixlen}").encode()

    @cached_property
    def peer_head(self) -> bytes:
        return (
            f'{{"node_id":{self.node_id},"name":{json.dumps(self.name)},"role":{json.dumps(self.role)},'
            f'"wg_public_key":{json.dumps(self.wg_public_key)},'
            f'"identity_public_key":{json.dumps(self.identity_public_key)},'
            f'"tunnel_address":{json.dumps(str(self.tunnel_address))},'
            f'"endpoints":{json.dumps(list(self.endpoints))},"allowed_ips":['
        ).encode()

    @cached_property
    def route_head(self) -> bytes:
        return (
            f'{{"destination":{self.node_id},'
            f'"destination_address":{json.dumps(str(self.tunnel_address))},"via":'
        ).encode()


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
        h = hashlib.blake2b(digest_size=32)
        h.update(f"{PROTOCOL_VERSION}|{mesh_cidr}|{keepalive}|".encode())
        for c in self.cards:
            h.update(c.peer_head)
            h.update(c.host_route)
            h.update(b"|%d\n" % c.listen_port)
        self.digest = h.digest()

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
) -> bytes:
    """Digest of everything `render_netmap` puts in this node's map except the serial."""
    h = hashlib.blake2b(directory.digest, digest_size=32)
    h.update(index.to_bytes(4, "big"))
    h.update(np.ascontiguousarray(next_row, dtype=np.int32).tobytes())
    h.update(np.ascontiguousarray(tenths, dtype=np.int64).tobytes())
    h.update(b"\x01" if forward else b"\x00")
    return h.digest()


@dataclass(frozen=True)
class MapInputs:
    """Everything one node's map at one serial is rendered from (kept to diff a later map against).

    `next_row[d]` is the index of the peer carrying traffic to the node at index d (d itself when direct,
    -1 when unreachable); `tenths[d]` the path cost in tenths (-1 when unreachable). The arrays are
    private copies: nobody changes them after construction."""

    directory: Directory
    index: int
    next_row: npt.NDArray[np.int32]
    tenths: npt.NDArray[np.int32]
    forward: bool

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
        f'{{"node_id":{me.node_id},"name":{json.dumps(me.name)},"role":{json.dumps(me.role)},'
        f'"tunnel_address":{json.dumps(str(me.tunnel_address))},'
        f'"mesh_cidr":{json.dumps(str(m.directory.mesh_cidr))},"listen_port":{me.listen_port}}}'
    ).encode()


def render_map(m: MapInputs, serial: int, with_kind: bool = False) -> bytes:
    """The JSON of `wire.models.NetMap` at `serial`; `with_kind` adds `"kind":"full"` (answers to delta
    polls), otherwise the bytes are exactly those of protocol version 1 before deltas."""
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


def _changed(
    old_ids: list[int], old: list[bytes], new_ids: list[int], new: list[bytes]
) -> tuple[list[bytes], list[int]]:
    """(fragments new or different in `new`, ids only in `old`), keyed by node id."""
    before = dict(zip(old_ids, old, strict=True))
    upserted = [f for i, f in zip(new_ids, new, strict=True) if before.get(i) != f]
    removed = sorted(before.keys() - set(new_ids))
    return upserted, removed


def render_delta(old: MapInputs, new: MapInputs, base_serial: int, serial: int) -> bytes:
    """The JSON of `wire.models.NetMapDelta` turning the map rendered from `old` at `base_serial` into
    the one rendered from `new` at `serial` (what `wire.delta.netmap_delta` of the two maps gives)."""
    old_ids, new_ids = old.peer_ids, new.peer_ids
    peers, peers_removed = _changed(old_ids, _peer_fragments(old), new_ids, _peer_fragments(new))
    routes, routes_removed = _changed(old_ids, _route_fragments(old), new_ids, _route_fragments(new))
    return b"".join(
        (
            b'{"kind":"delta","serial":%d,"base_serial":%d,"node":' % (serial, base_serial),
            _node_json(new),
            b',"forward":',
            b"true" if new.forward else b"false",
            b',"peers_upserted":[',
            b",".join(peers),
            b'],"peers_removed":',
            json.dumps(peers_removed).encode(),
            b',"routes_upserted":[',
            b",".join(routes),
            b'],"routes_removed":',
            json.dumps(routes_removed).encode(),
            b',"protocol_version":%d}' % PROTOCOL_VERSION,
        )
    )
