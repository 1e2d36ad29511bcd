"""Routing: for every (source, destination) pair, the next hop, on an implicit full mesh.

The graph: explicit edges (links with state: measured, down) and, when `DefaultLinks` are given, a
direct link between every other pair at a default cost (`base + jitter(a, b) + offset(a) + offset(b)`),
never stored. Without defaults only the explicit edges exist (a plain graph).

Rules (WireGuard cryptokey routing makes them necessary, see DESIGN.md):
- Edge costs are symmetric and make shortest paths unique (controller.topology adds a per-hop penalty
  and a deterministic tiny perturbation, `pair_jitter`, per edge). This module relies on them being
  positive.
- `next_hop(S, D)` is the parent of S in the shortest-path tree rooted at D. Following next hops from
  any node toward D walks that one tree (hop-by-hop consistent); with unique shortest paths the way back
  is the same path reversed (symmetric).
- Every path of two hops or more from i to j costs at least lb(i) + lb(j), lb being a lower bound of
  the node's edge costs. A pair whose direct edge is cheaper than that is *surely direct*: it needs no
  search and nothing is stored for it. The others are *candidates* (symmetric: the pair is one in both
  trees). Tree D is searched over its candidates only: a candidate reaches D directly, through one
  surely-direct node (one vector pass over the row), or through other candidates (a Dijkstra among them).
- Memory is O(nodes + explicit edges + candidate pairs); per change the work is the trees that can move.
  A change of edge a-b that moves no lower bound (the usual one: not a node's cheapest link) repairs the
  trees a and b in place (a dearer edge re-attaches the subtree below it, a cheaper one spreads its gain
  among the candidates) and recomputes only the other trees whose paths use a-b or can now. Otherwise
  the trees a, b and their candidate partners are recomputed (a tree's search reads only its
  candidates' rows and its own). Changes are applied one at a time.

Indexes: nodes are kept in ascending id order; arrays handed out are in that order.
"""

from __future__ import annotations

import heapq
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.sparse.csgraph import dijkstra

NO_HOP = -1
"""Next-hop value when the destination is unreachable."""

_SCIPY_NONE = -9999
# Distances closer than this (relative) are treated as "could be shorter": searching a pair too many
# is always safe, skipping one that is not surely direct is not.
_REL_TOL = 1e-9
_BLOCK = 256
"""Candidate rows handled at once in a tree's vector pass (bounds its temporary memory)."""
_SMALL_SEARCH = 48
"""Up to this many candidates a tree's search among them runs on numpy; beyond, on scipy."""

IntMatrix = npt.NDArray[np.int32]
FloatMatrix = npt.NDArray[np.float64]
Entry = tuple[int, float]
"""(next-hop node id or NO_HOP, path cost) of a candidate source in a tree."""

_LITTLE = sys.byteorder == "little"
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's finalizer, element-wise (wrapping arithmetic)."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return np.asarray(z ^ (z >> np.uint64(31)))


def _unit(h: npt.NDArray[np.uint64], scale: float = 1.0) -> FloatMatrix:
    """The top 32 bits as a float in [0, scale). Read as uint32 halves: numpy converts those to floats
    ten times faster than 64-bit integers."""
    if _LITTLE and h.ndim and h.flags.c_contiguous:
        high = h.view(np.uint32)[..., 1::2]
    else:
        high = (h >> np.uint64(32)).astype(np.uint32)
    out = high.astype(np.float64)
    out *= scale / 2**32
    return out


def node_hashes(ids: npt.ArrayLike) -> npt.NDArray[np.uint64]:
    return _mix(np.asarray(ids, dtype=np.int64).astype(np.uint64))


def pair_jitter(a: npt.ArrayLike, b: npt.ArrayLike, scale: float) -> FloatMatrix:
    """The deterministic per-pair offset in [0, scale), the same for a-b and b-a (element-wise): the
    high bits of the product of the two nodes' hashes (one multiplication per pair, so a row of the
    implicit mesh costs a few vector operations)."""
    return _unit(node_hashes(a) * node_hashes(b), scale)


@dataclass(frozen=True)
class EdgeCost:
    """The routing cost of the undirected edge a-b; `cost=None` means the edge is gone (link down)."""

    a: int
    b: int
    cost: float | None


@dataclass(frozen=True)
class DefaultLinks:
    """Every pair without an explicit edge is linked at `base + pair_jitter(a, b, jitter) + offset(a) +
    offset(b)` (offsets: per node, >= 0, 0 when absent)."""

    base: float
    jitter: float
    offsets: Mapping[int, float] = field(default_factory=dict)


class Router:
    """Shortest-path trees of an (implicit) undirected graph with symmetric positive costs."""

    def __init__(
        self, node_ids: Iterable[int], edges: Iterable[EdgeCost], defaults: DefaultLinks | None = None
    ) -> None:
        self.nodes: list[int] = sorted(set(node_ids))
        self.index: dict[int, int] = {n: i for i, n in enumerate(self.nodes)}
        self._defaults = defaults
        self._base = math.inf if defaults is None else defaults.base
        self._scale = 0.0 if defaults is None else defaults.jitter
        offsets = {} if defaults is None else defaults.offsets
        for node, off in offsets.items():
            if not off >= 0:
                raise ValueError(f"node {node}: offset must be >= 0, got {off}")
        self._ids = np.array(self.nodes, dtype=np.int64)
        self._h = node_hashes(self._ids)
        self._off = np.array([float(offsets.get(n, 0.0)) for n in self.nodes], dtype=np.float64)
        # node id -> {neighbour id: cost}; inf: the edge is down (with defaults) or absent
        self._explicit: dict[int, dict[int, float]] = {n: {} for n in self.nodes}
        # node id -> its explicit edges as (neighbour indexes, costs), built when a row needs them
        self._arrays: dict[int, tuple[npt.NDArray[np.intp], FloatMatrix]] = {}
        for e in edges:
            _check_cost(e)
            if e.a not in self.index:
                raise KeyError(e.a)
            if e.b not in self.index:
                raise KeyError(e.b)
            self._put(e.a, e.b, math.inf if e.cost is None else e.cost)
        self._lb = np.array([self._lower_bound(n) for n in self.nodes], dtype=np.float64)
        # tree (destination id) -> {candidate source id: (next hop id, cost)}; symmetric in its keys
        self._tree: dict[int, dict[int, Entry]] = {n: {} for n in self.nodes}
        self._relays: dict[int, int] = {}  # node id -> entries whose next hop it is (not their root)
        self._link_use: dict[tuple[int, int], int] = {}  # (lo, hi) -> entries whose first hop it is
        self._safe_defaults = self._defaults_surely_direct()
        for k, entries in self._compute(list(range(len(self.nodes)))).items():
            self._install(self.nodes[k], entries)

    # --- queries ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.nodes)

    def next_hop(self, source: int, destination: int) -> int | None:
        """The node `source` hands packets for `destination` to (itself when source == destination);
        None when unreachable."""
        self._known(source, destination)
        if source == destination:
            return source
        entry = self._tree[destination].get(source)
        if entry is None:
            return destination
        return None if entry[0] == NO_HOP else entry[0]

    def cost(self, source: int, destination: int) -> float | None:
        if source == destination:
            self._known(source)
            return 0.0
        entry = self._tree[destination].get(source)
        d = self._pair_cost(self.index[source], self.index[destination]) if entry is None else entry[1]
        return None if d == math.inf else d

    def next_hop_row(self, source: int) -> IntMatrix:
        """Next-hop INDEXES of `source` toward every destination index (NO_HOP when unreachable)."""
        row = np.arange(len(self.nodes), dtype=np.int32)
        partners = self._tree[source]
        if partners:
            index = self.index
            dest = np.fromiter((index[d] for d in partners), dtype=np.int64, count=len(partners))
            hops = np.fromiter(
                (self._hop_index(self._tree[d][source][0]) for d in partners),
                dtype=np.int32,
                count=len(partners),
            )
            row[dest] = hops
        return row

    def cost_row(self, source: int) -> FloatMatrix:
        """Path costs from `source` to every destination index (inf when unreachable)."""
        row = self._row(self.index[source])
        partners = self._tree[source]  # costs are symmetric: the tree rooted at source holds them
        if partners:
            index = self.index
            dest = np.fromiter((index[d] for d in partners), dtype=np.int64, count=len(partners))
            row[dest] = np.fromiter((e[1] for e in partners.values()), dtype=np.float64, count=len(partners))
        return row

    def rows_of(self, sources: Sequence[int]) -> tuple[IntMatrix, FloatMatrix]:
        """Next-hop indexes and path costs of many sources at once: row i belongs to sources[i]."""
        n = len(self.nodes)
        hops = np.empty((len(sources), n), dtype=np.int32)
        costs = np.empty((len(sources), n), dtype=np.float64)
        for i, s in enumerate(sources):
            hops[i] = self.next_hop_row(s)
            costs[i] = self.cost_row(s)
        return hops, costs

    def relayed_pairs(self) -> IntMatrix:
        """Index pairs (source, destination), source < destination, whose path goes through a relay
        (paths are symmetric, so each such pair stands for two relayed routes)."""
        index = self.index
        out = [
            (index[s], index[d])
            for d, entries in self._tree.items()
            for s, (hop, _) in entries.items()
            if hop != NO_HOP and hop != d and index[s] < index[d]
        ]
        out.sort(key=lambda p: (p[1], p[0]))
        return np.array(out, dtype=np.int32).reshape(-1, 2)

    def relayed_routes(self) -> list[tuple[int, int]]:
        """Index pairs (source, destination), both ways, whose route goes through a relay."""
        index = self.index
        return [
            (index[s], index[d])
            for d, entries in self._tree.items()
            for s, (hop, _) in entries.items()
            if hop != NO_HOP and hop != d
        ]

    def path_indexes(self, source: int, destination: int) -> list[int]:
        """`path` on node indexes (source and destination indexes; [] when unreachable)."""
        nodes, index = self.nodes, self.index
        path = self.path(nodes[source], nodes[destination])
        return [] if path is None else [index[x] for x in path]

    def candidate_pairs(self) -> int:
        """How many pairs are stored (not surely direct): the routing state beyond O(nodes)."""
        return sum(len(t) for t in self._tree.values()) // 2

    def trees(self) -> IntMatrix:
        """The next-hop matrix, [destination index, source index] -> next-hop index. It is n x n:
        materialized on each call, for callers that need every tree at once (controller.access)."""
        n = len(self.nodes)
        pred = np.repeat(np.arange(n, dtype=np.int32)[:, None], n, axis=1)
        index = self.index
        for d, entries in self._tree.items():
            k = index[d]
            for s, (hop, _) in entries.items():
                pred[k, index[s]] = self._hop_index(hop)
        return pred

    def forwards(self, node: int) -> bool:
        """True when some other pair's path passes through `node`."""
        self._known(node)
        return self._relays.get(node, 0) > 0

    def carries(self, a: int, b: int) -> bool:
        """True when the link a-b is the first hop of some route (either way)."""
        self._known(a, b)
        if a == b:
            return False
        if a not in self._tree[b]:
            return True  # surely direct: a's route to b is that link
        return self._link_use.get((a, b) if a < b else (b, a), 0) > 0

    def path(self, source: int, destination: int) -> list[int] | None:
        """The node sequence source..destination, following next hops; None when unreachable."""
        out = [source]
        x = source
        while x != destination:
            hop = self.next_hop(x, destination)
            if hop is None or len(out) > len(self.nodes):
                return None
            out.append(hop)
            x = hop
        return out

    # --- changes ---------------------------------------------------------------------------------

    def set_edges(self, changes: Sequence[EdgeCost]) -> set[int]:
        """Apply edge cost changes (None: remove / down). Returns the nodes whose next hops, path costs
        or forward flag may have changed (a superset: one that changed and changed back is included)."""
        for e in changes:
            _check_cost(e)
            self._known(e.a, e.b)
        changed: set[int] = set()
        for e in changes:
            i, j = self.index[e.a], self.index[e.b]
            before = self._pair_cost(i, j)
            new = math.inf if e.cost is None else e.cost
            if before == new:
                continue
            key = (e.a, e.b) if e.a < e.b else (e.b, e.a)
            bounds = (float(self._lb[i]), float(self._lb[j]))
            self._put(e.a, e.b, new)
            self._lb[i], self._lb[j] = self._lower_bound(e.a), self._lower_bound(e.b)
            if self._defaults is not None and bounds == (float(self._lb[i]), float(self._lb[j])):
                changed |= self._edge_moved(e.a, e.b, before, new)
            else:
                changed |= self._update({e.a, e.b}, {key: before})
        return changed

    def _edge_moved(self, a: int, b: int, old: float, new: float) -> set[int]:
        """One edge's cost moved, no lower bound did (so only the pair a-b can change candidacy): repair
        trees a and b, and recompute the other trees whose paths use the edge or can use it now."""
        affected: set[int] = set()
        tol = 1 + _REL_TOL
        for d in (self._tree[a].keys() | self._tree[b].keys()) - {a, b}:
            ha, da = self._route(d, a)
            hb, db = self._route(d, b)
            if ha == b or hb == a or da + new < db * tol or db + new < da * tol:
                affected.add(d)
        key = (a, b) if a < b else (b, a)
        before = {n: self._relays.get(n, 0) > 0 for n in self._relays}
        changed: set[int] = set()
        fresh = {d: self._repair_root(d, b if d == a else a, old, new) for d in (a, b)}
        fresh |= {
            self.nodes[k]: entries
            for k, entries in self._compute(sorted(self.index[d] for d in affected)).items()
        }
        for d, entries in fresh.items():
            changed |= self._diff(d, entries, {key: old})
            self._install(d, entries)
        for n in set(before) | set(self._relays):
            if before.get(n, False) != (self._relays.get(n, 0) > 0):
                changed.add(n)
        return changed

    def _route(self, d: int, s: int) -> Entry:
        """s's next hop toward d and its path cost (the direct edge when nothing is stored)."""
        entry = self._tree[d].get(s)
        return (d, self._pair_cost(self.index[s], self.index[d])) if entry is None else entry

    def _repair_root(self, d: int, b: int, old: float, new: float) -> dict[int, Entry]:
        """Tree d after its edge to b went from `old` to `new`: dearer, b's subtree is re-attached (the
        other nodes keep their paths); cheaper, the gain spreads from b among the candidates."""
        entries = dict(self._tree[d])
        k, j = self.index[d], self.index[b]
        row_k = self._row(k)
        reach = row_k.copy()
        if entries:
            index = self.index
            at = np.fromiter((index[s] for s in entries), dtype=np.int64, count=len(entries))
            reach[at] = np.fromiter((e[1] for e in entries.values()), dtype=np.float64, count=len(entries))
        hop_b, dist_b = entries.get(b, (d, old))
        reach[j] = dist_b
        lb = self._lb
        candidate = not row_k[j] < (lb[j] + lb[k]) * (1 - _REL_TOL)
        if new > old:
            if hop_b == d:  # b's path was the edge: b and everything below it move
                children: dict[int, list[int]] = {}
                for s, (hop, _) in entries.items():
                    children.setdefault(hop, []).append(s)
                subtree = [b]
                for x in subtree:
                    subtree.extend(children.get(x, ()))
                members = np.array(sorted(self.index[x] for x in subtree), dtype=np.intp)
                entries.update(self._attach(k, members, row_k, reach))
        elif new < dist_b:  # cheaper than b's path: b goes direct, and the gain spreads
            entries[b] = (d, new)
            reach[j] = new
            self._spread(k, j, entries, reach)
        if not candidate:
            entries.pop(b, None)  # surely direct now: its route is the edge, nothing to store
        return entries

    def _spread(self, k: int, start: int, entries: dict[int, Entry], reach: FloatMatrix) -> None:
        """A Dijkstra from node index `start` (whose path cost to k just fell to reach[start]) over k's
        candidates: each that gets a cheaper path through it takes it."""
        nodes, index = self.nodes, self.index
        cand = np.array(sorted(index[s] for s in entries if index[s] != start), dtype=np.intp)
        if not len(cand):
            return
        heap = [(float(reach[start]), start)]
        done: set[int] = set()
        while heap:
            du, u = heapq.heappop(heap)
            if u in done or du > reach[u]:
                continue
            done.add(u)
            alt = self._row(u)[cand] + du
            better = np.flatnonzero(alt < reach[cand])
            for c in better.tolist():
                s = int(cand[c])
                reach[s] = alt[c]
                entries[nodes[s]] = (nodes[u], float(alt[c]))
                heapq.heappush(heap, (float(alt[c]), s))

    def add_node(self, node_id: int, edges: Sequence[EdgeCost], offset: float = 0.0) -> None:
        """Add a node (with a larger id than every present one), its explicit edges and its default
        links' offset."""
        if self.nodes and node_id <= self.nodes[-1]:
            raise ValueError(f"node {node_id} must have a larger id than {self.nodes[-1]}")
        if not offset >= 0:
            raise ValueError(f"node {node_id}: offset must be >= 0, got {offset}")
        for e in edges:
            _check_cost(e)
            other = e.b if e.a == node_id else e.a
            if node_id not in (e.a, e.b) or other == node_id:
                raise ValueError(f"edge {e.a}-{e.b} does not join node {node_id} to another node")
            self._known(other)
        if len({e.a if e.b == node_id else e.b for e in edges}) != len(edges):
            raise ValueError(f"node {node_id}: an edge appears twice")
        x = len(self.nodes)
        self.nodes.append(node_id)
        self.index[node_id] = x
        self._ids = np.append(self._ids, node_id)
        self._h = np.append(self._h, node_hashes([node_id]))
        self._off = np.append(self._off, offset)
        self._explicit[node_id] = {}
        self._tree[node_id] = {}
        self._lb = np.append(self._lb, math.inf)
        old_costs: dict[tuple[int, int], float] = {}
        for e in edges:
            other = e.b if e.a == node_id else e.a
            old_costs[(other, node_id)] = self._pair_cost(self.index[other], x)
            self._put(e.a, e.b, math.inf if e.cost is None else e.cost)
        # Trees the new node may shorten as a relay: a candidate pair s-d whose cost is above what
        # s-x-d costs (a surely-direct pair cannot get shorter).
        row_x = self._row(x)
        shortcut: set[int] = set()
        limit = 2 * float(self._lower_bound(node_id)) * (1 - _REL_TOL)
        index = self.index
        for d, entries in self._tree.items():
            if not entries or d == node_id:
                continue
            via_d = row_x[index[d]]
            for s, (_, dist) in entries.items():
                if dist > limit and row_x[index[s]] + via_d < dist * (1 + _REL_TOL):
                    shortcut.add(d)
                    break
        self._update({node_id, *(k[0] for k in old_costs)}, old_costs, extra=shortcut)

    def remove_node(self, node_id: int) -> None:
        x = self.index[node_id]
        # Trees with a path through the node (every such path has an entry whose next hop it is), and
        # the node's candidate partners (their trees lose its entry).
        inner: set[int] = set()
        if self._relays.get(node_id, 0) > 0:
            inner = {
                d
                for d, entries in self._tree.items()
                if d != node_id and any(hop == node_id for hop, _ in entries.values())
            }
        partners = set(self._tree[node_id])
        neighbours = set(self._explicit[node_id])
        self._install(node_id, {})
        for d in partners:
            entries = self._tree[d]
            gone = entries.get(node_id)
            if gone is not None:
                self._count(d, node_id, gone[0], -1)
                del entries[node_id]
        for y in neighbours:
            del self._explicit[y][node_id]
        del self._explicit[node_id], self._tree[node_id]
        self._relays.pop(node_id, None)
        del self.nodes[x]
        self.index = {node: i for i, node in enumerate(self.nodes)}
        self._arrays.clear()  # the indexes moved
        self._ids = np.delete(self._ids, x)
        self._h = np.delete(self._h, x)
        self._off = np.delete(self._off, x)
        self._lb = np.delete(self._lb, x)
        for y in neighbours:
            self._lb[self.index[y]] = self._lower_bound(y)
        self._update(neighbours, {}, extra=inner)

    # --- internals -------------------------------------------------------------------------------

    def _update(
        self, touched: set[int], old_costs: Mapping[tuple[int, int], float], extra: Iterable[int] = ()
    ) -> set[int]:
        """The explicit edges of `touched` nodes changed (their old costs: `old_costs`): refresh their
        lower bounds and every tree that can move; the nodes whose routes or forward flag changed."""
        affected = set(extra)
        for y in touched:
            affected.add(y)
            affected.update(self._tree[y])
        for y in touched:
            self._lb[self.index[y]] = self._lower_bound(y)
        safe = self._defaults_surely_direct()
        if safe != self._safe_defaults:
            # Default pairs may have become candidates (or stopped being ones) anywhere.
            affected = set(self.nodes)
        self._safe_defaults = safe
        for y in touched:
            affected.update(self.nodes[j] for j in self._candidates(self.index[y]))
        before = {n: self._relays.get(n, 0) > 0 for n in self._relays}
        changed: set[int] = set()
        order = sorted(self.index[d] for d in affected if d in self.index)
        for k, entries in self._compute(order).items():
            d = self.nodes[k]
            changed |= self._diff(d, entries, old_costs)
            self._install(d, entries)
        for n in set(before) | set(self._relays):
            if before.get(n, False) != (self._relays.get(n, 0) > 0) and n in self.index:
                changed.add(n)
        return changed

    def _diff(self, d: int, new: Mapping[int, Entry], old_costs: Mapping[tuple[int, int], float]) -> set[int]:
        """Sources whose route toward d moves (next hop, or cost as maps show it) from the tree's old
        entries to `new`."""
        old = self._tree[d]
        out: set[int] = set()
        k = self.index[d]
        for s in old.keys() | new.keys():
            if s not in self.index:
                continue
            a = old.get(s)
            b = new.get(s)
            if a is None:
                key = (s, d) if s < d else (d, s)
                c = old_costs.get(key)
                a = (d, self._pair_cost(self.index[s], k) if c is None else c)
            if b is None:
                b = (d, self._pair_cost(self.index[s], k))
            if a[0] != b[0] or _tenths(a[1]) != _tenths(b[1]):
                out.add(s)
        # a surely-direct pair whose edge cost moved (in neither entry set)
        for lo, hi in old_costs:
            s = hi if d == lo else lo
            if (
                d in (lo, hi)
                and s in self.index
                and s not in old
                and s not in new
                and _tenths(old_costs[lo, hi]) != _tenths(self._pair_cost(self.index[s], k))
            ):
                out.add(s)
        return out

    def _install(self, d: int, entries: dict[int, Entry]) -> None:
        for s, (hop, _) in self._tree.get(d, {}).items():
            self._count(d, s, hop, -1)
        for s, (hop, _) in entries.items():
            self._count(d, s, hop, 1)
        self._tree[d] = entries

    def _count(self, d: int, s: int, hop: int, delta: int) -> None:
        if hop == NO_HOP:
            return
        key = (s, hop) if s < hop else (hop, s)
        use = self._link_use.get(key, 0) + delta
        if use:
            self._link_use[key] = use
        else:
            self._link_use.pop(key, None)
        if hop != d:
            relays = self._relays.get(hop, 0) + delta
            if relays:
                self._relays[hop] = relays
            else:
                self._relays.pop(hop, None)

    def _known(self, *nodes: int) -> None:
        """KeyError for a node that is not routed."""
        for n in nodes:
            if n not in self.index:
                raise KeyError(n)

    def _hop_index(self, hop: int) -> int:
        return NO_HOP if hop == NO_HOP else self.index[hop]

    def _put(self, a: int, b: int, cost: float) -> None:
        self._arrays.pop(a, None)
        self._arrays.pop(b, None)
        if cost == math.inf and self._defaults is None:
            self._explicit[a].pop(b, None)
            self._explicit[b].pop(a, None)
            return
        self._explicit[a][b] = cost
        self._explicit[b][a] = cost

    def _lower_bound(self, node: int) -> float:
        """No edge of `node` costs less (its default links' floor and its explicit edges)."""
        floor = self._base + float(self._off[self.index[node]])
        explicit = self._explicit[node]
        return min(floor, min(explicit.values())) if explicit else floor

    def _defaults_surely_direct(self) -> bool:
        """Every default pair is surely direct (the usual case: a relay pays one more hop penalty than
        a default link costs), so candidates are explicit pairs only."""
        if self._defaults is None or len(self.nodes) < 2:
            return False
        slack = self._lb - self._off
        tol = _REL_TOL * 2 * float(np.max(self._lb))
        return bool(self._base + self._scale + tol < 2 * float(np.min(slack)))

    def _row(self, i: int) -> FloatMatrix:
        """Edge costs from node index i to every node index (0 to itself, inf: no edge)."""
        row: FloatMatrix = self._rows(np.array([i], dtype=np.intp))[0]
        return row

    def _rows(self, idx: npt.NDArray[np.intp]) -> FloatMatrix:
        """Edge costs from each node index in `idx` (row i: idx[i]) to every node index."""
        n = len(self.nodes)
        m = len(idx)
        if self._defaults is None:
            rows = np.full((m, n), math.inf)
        else:
            rows = _unit(self._h[idx][:, None] * self._h[None, :], self._scale)
            rows += self._base
            if self._off.any():
                rows += self._off[idx][:, None] + self._off[None, :]
        nodes, explicit = self.nodes, self._explicit
        at = [r for r, i in enumerate(idx.tolist()) if explicit[nodes[i]]]
        if at:
            parts = [self._edge_arrays(nodes[int(idx[r])]) for r in at]
            where = np.repeat(np.array(at, dtype=np.intp), [len(cols) for cols, _ in parts])
            rows[where, np.concatenate([cols for cols, _ in parts])] = np.concatenate([c for _, c in parts])
        rows[np.arange(m), idx] = 0.0
        return rows

    def _edge_arrays(self, node: int) -> tuple[npt.NDArray[np.intp], FloatMatrix]:
        cached = self._arrays.get(node)
        if cached is None:
            explicit = self._explicit[node]
            index = self.index
            cols = np.fromiter((index[j] for j in explicit), dtype=np.intp, count=len(explicit))
            cached = self._arrays[node] = (
                cols,
                np.fromiter(explicit.values(), dtype=np.float64, count=len(explicit)),
            )
        return cached

    def _pair_cost(self, i: int, j: int) -> float:
        if i == j:
            return 0.0
        c = self._explicit[self.nodes[i]].get(self.nodes[j])
        if c is not None:
            return c
        if self._defaults is None:
            return math.inf
        jit = float(_unit(self._h[[i]] * self._h[[j]], self._scale)[0])
        return (self._base + jit) + (float(self._off[i]) + float(self._off[j]))

    def _candidates(self, k: int, row: FloatMatrix | None = None) -> npt.NDArray[np.intp]:
        """Indexes of the sources that are not surely direct to node index k."""
        lb = self._lb
        if self._safe_defaults:
            explicit = self._explicit[self.nodes[k]]
            index = self.index
            bound = float(lb[k])
            return np.array(
                sorted(
                    index[j]
                    for j, c in explicit.items()
                    if not c < (bound + float(lb[index[j]])) * (1 - _REL_TOL)
                ),
                dtype=np.intp,
            )
        if row is None:
            row = self._row(k)
        sure = row < (lb + lb[k]) * (1 - _REL_TOL)
        sure[k] = True
        return np.flatnonzero(~sure)

    def _compute(self, trees: Sequence[int]) -> dict[int, dict[int, Entry]]:
        """The candidate entries of the trees rooted at these node indexes."""
        if self._defaults is None:
            return self._compute_explicit(trees)
        return {k: self._search(k) for k in trees}

    def _search(self, k: int) -> dict[int, Entry]:
        """Tree k over its candidates: each reaches k directly, through one surely-direct node, or
        through other candidates."""
        row_k = self._row(k)
        cand = self._candidates(k, row_k)
        m = len(cand)
        if m == 0:
            return {}
        nodes = self.nodes
        if np.count_nonzero(np.isfinite(row_k)) == 1:  # isolated: only itself
            return {nodes[s]: (NO_HOP, math.inf) for s in cand.tolist()}
        return self._attach(k, cand, row_k, row_k)

    def _attach(
        self, k: int, cand: npt.NDArray[np.intp], row_k: FloatMatrix, reach: FloatMatrix
    ) -> dict[int, Entry]:
        """New paths toward k for the node indexes `cand`, every other node keeping its path: each
        reaches k directly (`row_k`: edge costs to k), through one other node q (its path cost to k:
        `reach[q]`), or through other members of `cand` (a Dijkstra among them)."""
        m = len(cand)
        nodes = self.nodes
        tent = np.empty(m)
        par = np.empty(m, dtype=np.int64)
        inner = np.empty((m, m))
        for lo in range(0, m, _BLOCK):
            block = cand[lo : lo + _BLOCK]
            rows = self._rows(block)
            inner[lo : lo + len(block)] = rows[:, cand]
            via = rows
            via += reach
            via[:, cand] = math.inf
            via[:, k] = math.inf
            r = np.argmin(via, axis=1)
            best = via[np.arange(len(block)), r]
            direct = row_k[block]
            take_direct = direct <= best
            tent[lo : lo + len(block)] = np.where(take_direct, direct, best)
            par[lo : lo + len(block)] = np.where(take_direct, k, r)
        dist, par = _among(tent, par, inner, cand)
        out: dict[int, Entry] = {}
        for s, d, p in zip(cand.tolist(), dist.tolist(), par.tolist(), strict=True):
            if d == math.inf:
                out[nodes[s]] = (NO_HOP, math.inf)
            else:
                out[nodes[s]] = (nodes[p], d)
        return out

    def _compute_explicit(self, trees: Sequence[int]) -> dict[int, dict[int, Entry]]:
        """Without defaults: scipy's Dijkstra from each root over the explicit edges."""
        out: dict[int, dict[int, Entry]] = {}
        if not len(trees):
            return out
        n = len(self.nodes)
        rows, cols, data = [], [], []
        index = self.index
        for a, nbrs in self._explicit.items():
            for b, c in nbrs.items():
                rows.append(index[a])
                cols.append(index[b])
                data.append(c)
        w = sp.csr_array(
            (
                np.array(data, dtype=np.float64),
                (np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)),
            ),
            shape=(n, n),
        )
        nodes = self.nodes
        for lo in range(0, len(trees), _BLOCK):
            chunk = list(trees[lo : lo + _BLOCK])
            dist, pred = dijkstra(w, directed=True, indices=chunk, return_predecessors=True)
            for i, k in enumerate(chunk):
                entries: dict[int, Entry] = {}
                for s in self._candidates(k).tolist():
                    p = int(pred[i, s])
                    d = float(dist[i, s])
                    entries[nodes[s]] = (
                        (NO_HOP, math.inf) if p == _SCIPY_NONE or d == math.inf else (nodes[p], d)
                    )
                out[k] = entries
        return out


def _among(
    tent: FloatMatrix, par: npt.NDArray[np.int64], inner: FloatMatrix, cand: npt.NDArray[np.intp]
) -> tuple[FloatMatrix, npt.NDArray[np.int64]]:
    """Dijkstra among the candidates: `tent` is each one's best way to the root not through another
    candidate (its next hop `par`), `inner` the edge costs between them."""
    m = len(tent)
    if m == 1:
        return tent, par
    if m > _SMALL_SEARCH:
        # A virtual root 0 joined to each candidate at its tentative cost.
        g = np.zeros((m + 1, m + 1))
        g[0, 1:] = np.where(np.isfinite(tent), tent, 0.0)
        g[1:, 1:] = np.where(np.isfinite(inner), inner, 0.0)
        np.fill_diagonal(g, 0.0)
        dist, pred = dijkstra(sp.csr_array(g), directed=True, indices=0, return_predecessors=True)
        via = pred[1:]
        out_par = np.where(via == 0, par, cand[np.maximum(via - 1, 0)])
        return np.asarray(dist[1:]), np.asarray(out_par, dtype=np.int64)
    dist = tent.copy()
    out_par = par.copy()
    done = np.zeros(m, dtype=bool)
    for _ in range(m):
        open_ = np.where(done, math.inf, dist)
        u = int(np.argmin(open_))
        if open_[u] == math.inf:
            break
        done[u] = True
        alt = dist[u] + inner[u]
        better = ~done & (alt < dist)
        dist[better] = alt[better]
        out_par[better] = cand[u]
    return dist, out_par


def cost_tenths(costs: FloatMatrix) -> npt.NDArray[np.int64]:
    """Path costs as maps show them: whole tenths (rounded half to even), -1 when unreachable. The one
    rule: maps render these (controller.netmap), and a cost change is visible when its tenths move."""
    finite = np.isfinite(costs)
    return np.where(finite, np.rint(np.where(finite, costs, 0.0) * 10), -1).astype(np.int64)


def _tenths(d: float) -> int:
    """One cost as `cost_tenths` shows it (the same rule on a scalar)."""
    return int(np.rint(d * 10)) if np.isfinite(d) else -1


def _check_cost(e: EdgeCost) -> None:
    if e.a == e.b:
        raise ValueError(f"edge {e.a}-{e.b} is a loop")
    if e.cost is not None and not (e.cost > 0 and e.cost != np.inf):
        raise ValueError(f"edge {e.a}-{e.b}: cost must be positive and finite, got {e.cost}")
