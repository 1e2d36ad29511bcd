"""The dense Router as it was before the implicit full mesh (controller/routing.py at 5666530), kept
only as the baseline bench.topology measures the new one against, in the same process. Not used by
the controller; do not change it (it is the old behaviour, frozen).

Its own description follows.

Routing: for every (source, destination) pair, the next hop, from shortest-path trees over the link graph.

Rules (WireGuard cryptokey routing makes them necessary, see DESIGN.md):
- Edge costs are symmetric and make shortest paths unique (controller.topology adds a per-hop penalty
  and a deterministic tiny perturbation per edge). This module only relies on them being positive.
- `next_hop(S, D)` is the parent of S in the shortest-path tree rooted at D. Following next hops from
  any node toward D therefore walks that one tree: every intermediate node continues the same path
  (hop-by-hop consistent). With unique shortest paths on an undirected graph the tree rooted at S holds
  the reverse path, so path(D, S) = reverse(path(S, D)) (symmetric).
- A full compute runs scipy's compiled Dijkstra from every node. An edge change touches only the trees
  that use the edge (cost up or edge gone) or in which it becomes a shortcut (cost down or edge new);
  every other tree keeps its distances (they still satisfy the triangle inequality), so its paths stay.
  One change is repaired locally in each touched tree: the subtree hanging below the edge is re-attached
  by a Dijkstra over that subtree only, or the improvement spreads from the edge by an improve-only
  Dijkstra; a large repair recomputes the tree with scipy. Large batches recompute the touched trees.

Indexes: nodes are kept in ascending id order; row D of the predecessor matrix is the tree rooted at D.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.sparse.csgraph import dijkstra

from controller.routing import _tenths, cost_tenths  # the one tenths rule maps use

NO_HOP = -1
"""Next-hop value when the destination is unreachable."""

_SCIPY_NONE = -9999
# How a batch of edge changes is applied, by estimated cost (seconds on the machine this was tuned on;
# only their ratios matter): repairing the touched trees one change at a time costs about
# REPAIR_S + REPAIR_PER_NEIGHBOUR_S * average degree per (change, tree it touches); recomputing every
# touched tree once costs a Dijkstra each. A sparse graph with many changes favours recomputing; a
# dense mesh whose changes are one node's direct links (each touches two or three trees) favours
# repairing.
REPAIR_S = 2e-5
REPAIR_PER_NEIGHBOUR_S = 1e-7
DIJKSTRA_BASE_S = 1.5e-4
DIJKSTRA_PER_ENTRY_S = 1.4e-9
_VECTOR_DEGREE = 48
"""Neighbour lists longer than this are scanned with numpy, shorter ones in Python (cheaper per call)."""
# Distances closer than this (relative) are treated as "could be shorter": recomputing a tree too many
# is always safe, skipping one that changed is not.
_REL_TOL = 1e-9

IntMatrix = npt.NDArray[np.int32]
FloatMatrix = npt.NDArray[np.float64]


@dataclass(frozen=True)
class EdgeCost:
    """The routing cost of the undirected edge a-b; `cost=None` means the edge is gone (link down)."""

    a: int
    b: int
    cost: float | None


class Router:
    """Shortest-path trees of an undirected graph with symmetric positive costs, kept up to date."""

    def __init__(self, node_ids: Iterable[int], edges: Iterable[EdgeCost]) -> None:
        self.nodes: list[int] = sorted(set(node_ids))
        self.index: dict[int, int] = {n: i for i, n in enumerate(self.nodes)}
        n = len(self.nodes)
        # One pass over the edges in Python, the rest on arrays (a full mesh has n^2/2 of them).
        table = np.array(
            [(e.a, e.b, np.nan if e.cost is None else e.cost) for e in edges], dtype=np.float64
        ).reshape(-1, 3)
        for k in np.flatnonzero(
            (table[:, 0] == table[:, 1]) | ~(np.isnan(table[:, 2]) | _usable(table[:, 2]))
        ):
            a, b, cost = table[k]
            _check_cost(EdgeCost(int(a), int(b), float(cost)))
        table = table[~np.isnan(table[:, 2])]
        ids = np.array(self.nodes, dtype=np.float64)
        ends = np.searchsorted(ids, table[:, :2]).clip(0, max(n - 1, 0))
        unknown = table[:, :2][ids[ends] != table[:, :2]] if n else table[:, :2].ravel()
        if len(unknown):
            raise KeyError(int(unknown[0]))
        lo, hi = ends.min(axis=1), ends.max(axis=1)
        # The same edge twice: the last one counts.
        _, last = np.unique((lo * max(n, 1) + hi)[::-1], return_index=True)
        keep = len(lo) - 1 - last
        lo, hi, cost = lo[keep], hi[keep], table[keep, 2]
        self._w = _csr(np.concatenate((cost, cost)), np.concatenate((lo, hi)), np.concatenate((hi, lo)), n)
        # A full computation's result becomes the buffers as it is: copying 12 MB at 1,000 nodes costs
        # a tenth of the computation.
        self._pred_buf: IntMatrix
        self._dist_buf: FloatMatrix
        if n:
            self._pred_buf, self._dist_buf = self._all_trees()
        else:
            self._pred_buf, self._dist_buf = np.empty((0, 0), np.int32), np.empty((0, 0), np.float64)
        self._pred: IntMatrix = self._pred_buf
        self._dist: FloatMatrix = self._dist_buf
        self._relays = self._relay_counts(self._pred, np.arange(n))

    # --- queries ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.nodes)

    def next_hop(self, source: int, destination: int) -> int | None:
        """The node `source` hands packets for `destination` to (itself when source == destination);
        None when unreachable."""
        hop = int(self._pred[self.index[destination], self.index[source]])
        return None if hop == NO_HOP else self.nodes[hop]

    def cost(self, source: int, destination: int) -> float | None:
        d = float(self._dist[self.index[destination], self.index[source]])
        return None if d == np.inf else d

    def next_hop_row(self, source: int) -> IntMatrix:
        """Next-hop INDEXES of `source` toward every destination index (NO_HOP when unreachable)."""
        return np.ascontiguousarray(self._pred[:, self.index[source]])

    def cost_row(self, source: int) -> FloatMatrix:
        """Path costs from `source` to every destination index (inf when unreachable)."""
        return np.ascontiguousarray(self._dist[:, self.index[source]])

    def rows_of(self, sources: Sequence[int]) -> tuple[IntMatrix, FloatMatrix]:
        """Next-hop indexes and path costs of many sources at once: row i belongs to sources[i]."""
        idx = np.array([self.index[s] for s in sources], dtype=np.int64)
        return np.ascontiguousarray(self._pred.T[idx]), np.ascontiguousarray(self._dist.T[idx])

    def relayed_pairs(self) -> IntMatrix:
        """Index pairs (source, destination), source < destination, whose path goes through a relay
        (paths are symmetric, so each such pair stands for two relayed routes)."""
        n = len(self.nodes)
        idx = np.arange(n)
        pred = self._pred[:n, :n]
        through = (pred >= 0) & (pred != idx[:, None]) & (idx[:, None] > idx[None, :])
        return np.argwhere(through)[:, ::-1].astype(np.int32)

    def trees(self) -> IntMatrix:
        """The next-hop matrix, read-only: [destination index, source index] -> next-hop index."""
        view = self._pred.view()
        view.flags.writeable = False
        return view

    def forwards(self, node: int) -> bool:
        """True when some other pair's path passes through `node`."""
        return bool(self._relays[self.index[node]] > 0)

    def path(self, source: int, destination: int) -> list[int] | None:
        """The node sequence source..destination, following next hops; None when unreachable."""
        d = self.index[destination]
        i = self.index[source]
        out = [source]
        while i != d:
            i = int(self._pred[d, i])
            if i == NO_HOP or len(out) > len(self.nodes):
                return None
            out.append(self.nodes[i])
        return out

    # --- changes ---------------------------------------------------------------------------------

    def set_edges(self, changes: Sequence[EdgeCost]) -> set[int]:
        """Apply edge cost changes (None: remove). Returns the nodes whose next hops, path costs or
        forward flag may have changed (a superset: one that changed and changed back is included)."""
        for e in changes:
            _check_cost(e)
        if not changes:
            return set()
        us = np.array([self.index[e.a] for e in changes])
        vs = np.array([self.index[e.b] for e in changes])
        new_costs = [np.inf if e.cost is None else e.cost for e in changes]
        touched = self._touched_trees(us, vs, np.array(new_costs))
        trees = np.nonzero(touched.any(axis=1))[0]
        degree = self._w.nnz / max(1, len(self.nodes))
        repair = float(touched.sum()) * (REPAIR_S + REPAIR_PER_NEIGHBOUR_S * degree)
        recompute = len(trees) * (DIJKSTRA_BASE_S + self._w.nnz * DIJKSTRA_PER_ENTRY_S)
        if len(changes) == 1 or repair <= recompute:
            changed: set[int] = set()
            for e in changes:
                changed |= self._set_one(e)
            return changed
        self._write_costs(us.tolist(), vs.tolist(), new_costs)
        return self._recompute_and_diff(trees)

    def add_node(self, node_id: int, edges: Sequence[EdgeCost]) -> None:
        """Add a node (with a larger id than every present one) and its edges."""
        if self.nodes and node_id <= self.nodes[-1]:
            raise ValueError(f"node {node_id} must have a larger id than {self.nodes[-1]}")
        n = len(self.nodes)
        self.nodes.append(node_id)
        self.index[node_id] = n
        nbrs: list[int] = []
        costs: list[float] = []
        for e in edges:
            if e.cost is None:
                continue
            _check_cost(e)
            other = e.b if e.a == node_id else e.a
            if node_id not in (e.a, e.b) or other == node_id:
                raise ValueError(f"edge {e.a}-{e.b} does not join node {node_id} to another node")
            nbrs.append(self.index[other])
            costs.append(e.cost)
        order = np.argsort(np.array(nbrs, dtype=np.int64), kind="stable")
        nb = np.array(nbrs, dtype=np.int64)[order]
        c = np.array(costs, dtype=np.float64)[order]
        if len(nb) != len(np.unique(nb)):
            raise ValueError(f"node {node_id}: an edge appears twice")
        self._w = _append_node(self._w, nb, c)
        self._grow(n + 1)
        self._relays = np.append(self._relays, 0)
        if not len(nb):
            self._pred[n, n] = n
            self._dist[n, n] = 0.0
            return
        # A shortest path between an old node d and the new node x ends with an edge k-x and never
        # crosses x before, so dist(d, x) = min over x's neighbours k of dist_old(d, k) + c(k, x): that
        # one k is x's first hop toward d, and d's first hop toward x is its first hop toward k (x
        # itself when d == k). This is the new tree, and x's place as a leaf in every old tree, without
        # a Dijkstra. Since every path of two hops or more costs at least the cheapest edge plus the
        # cheapest edge of x, a direct edge cheaper than that is the shortest path: those d need no
        # search (in a full mesh of fresh links, all of them).
        old_dist, old_pred = self._dist[:n, :n], self._pred[:n, :n]
        edge = np.full(n, np.inf)
        edge[nb] = c
        floor = float(self._w.data.min()) if self._w.nnz else np.inf
        direct = edge * (1 + _REL_TOL) < floor + float(c.min())
        best = np.where(direct, np.arange(n), -1)
        dist_x = np.where(direct, edge, np.inf)
        rest = np.flatnonzero(~direct)
        if len(rest):
            through = (old_dist[nb][:, rest] if len(nb) < n else old_dist[:, rest]) + c[:, None]
            k = np.argmin(through, axis=0)
            dist_x[rest] = through[k, np.arange(len(rest))]
            best[rest] = nb[k]
        reachable = np.isfinite(dist_x)
        trees = np.arange(n)
        parent = np.where(reachable, best, NO_HOP)
        first = np.where(parent == trees, n, old_pred[np.maximum(parent, 0), trees])
        self._pred[n, :n] = np.where(reachable, first, NO_HOP)
        self._pred[n, n] = n
        self._dist[n, :n] = self._dist[:n, n] = dist_x
        self._dist[n, n] = 0.0
        self._pred[:n, n] = parent
        self._relays += self._relay_counts(self._pred[[n]], np.array([n]))
        relayed = reachable & (parent != trees)
        self._relays += np.bincount(parent[relayed], minlength=n + 1)
        # An old tree changes only if x offers some node j a shorter way: dist(d, x) + c(x, j) <
        # dist(d, j); no j is that far from d unless d's farthest node is beyond dist(d, x) + x's
        # cheapest edge, so only those trees are checked edge by edge.
        farthest = old_dist.max(axis=1)
        maybe = np.flatnonzero(dist_x + float(c.min()) < farthest * (1 + _REL_TOL))
        affected = np.zeros(n, dtype=bool)
        if len(maybe):
            via_x = dist_x[maybe][:, None] + c[None, :]
            affected[maybe] = (via_x < old_dist[maybe][:, nb] * (1 + _REL_TOL)).any(axis=1)
        if affected.any():
            trees = np.nonzero(affected)[0]
            self._relays -= self._relay_counts(self._pred[trees], trees)
            self._recompute(trees)
            self._relays += self._relay_counts(self._pred[trees], trees)

    def _grow(self, n: int) -> None:
        """Make the matrices n x n, keeping what they hold; room grows by a quarter at a time so a run
        of enrollments does not copy them every time."""
        old = self._pred.shape[0]
        if self._pred_buf.shape[0] < n:
            room = max(n, old + old // 4 + 8)
            pred = np.full((room, room), NO_HOP, dtype=np.int32)
            dist = np.full((room, room), np.inf, dtype=np.float64)
            pred[:old, :old] = self._pred
            dist[:old, :old] = self._dist
            self._pred_buf, self._dist_buf = pred, dist
        self._pred = self._pred_buf[:n, :n]
        self._dist = self._dist_buf[:n, :n]
        self._pred[old:, :] = NO_HOP
        self._pred[:, old:] = NO_HOP
        self._dist[old:, :] = np.inf
        self._dist[:, old:] = np.inf

    def remove_node(self, node_id: int) -> None:
        x = self.index[node_id]
        n = len(self.nodes)
        # Trees where x is a leaf lose only x; trees where x is inner must be recomputed. A node that
        # relays for nobody is a leaf everywhere: its own tree and its column go, nothing else moves.
        relays_anyone = bool(self._relays[x] > 0)
        if relays_anyone:
            inner = (self._pred == x).any(axis=1)
            inner[x] = False
        else:
            trees = np.arange(n)
            col = self._pred[:, x]
            carried = (col >= 0) & (col != trees)
            carried[x] = False
            relays = self._relays - self._relay_counts(self._pred[[x]], np.array([x]))
            relays -= np.bincount(col[carried], minlength=n)
            self._relays = np.delete(relays, x)
        self._w = _drop_node(self._w, x)
        for buf in (self._pred_buf, self._dist_buf):  # shifted in place: the room stays
            buf[x : n - 1, :n] = buf[x + 1 : n, :n]
            buf[: n - 1, x : n - 1] = buf[: n - 1, x + 1 : n]
        self._pred = self._pred_buf[: n - 1, : n - 1]
        self._dist = self._dist_buf[: n - 1, : n - 1]
        np.subtract(self._pred, 1, out=self._pred, where=self._pred > x)
        del self.nodes[x]
        self.index = {node: i for i, node in enumerate(self.nodes)}
        if relays_anyone:
            inner = np.delete(inner, x)
            if inner.any():
                self._recompute(np.nonzero(inner)[0])
            self._relays = self._relay_counts(self._pred, np.arange(len(self.nodes)))

    # --- internals -------------------------------------------------------------------------------

    def _set_one(self, e: EdgeCost) -> set[int]:
        u, v = self.index[e.a], self.index[e.b]
        old = self._cost(u, v)
        new = np.inf if e.cost is None else e.cost
        if new == old:
            return set()
        self._write_costs([u], [v], [new])
        # (tree, node, old parent, old tenths) for every entry a repair rewrote
        rewritten: list[tuple[int, int, int, int]] = []
        big: list[int] = []
        if new > old:
            for tree, child in self._trees_using(u, v):
                if not self._reattach_subtree(tree, child, rewritten):
                    big.append(tree)
        else:
            dist = self._dist
            for t, s in ((v, u), (u, v)):
                for tree in np.nonzero(dist[:, s] + new < dist[:, t])[0].tolist():
                    self._spread_improvement(tree, t, s, float(dist[tree, s] + new), rewritten)
        changed = self._apply_rewrites(rewritten)
        if big:
            changed |= self._recompute_and_diff(np.array(big))
        return changed

    def _cost(self, i: int, j: int) -> float:
        w = self._w
        lo, hi = w.indptr[i], w.indptr[i + 1]
        k = lo + int(np.searchsorted(w.indices[lo:hi], j))
        return float(w.data[k]) if k < hi and w.indices[k] == j else np.inf

    def _slice(self, i: int) -> tuple[npt.NDArray[np.int32], FloatMatrix]:
        """Neighbour indexes of node index i and the edge costs (inf: edge down)."""
        w = self._w
        lo, hi = w.indptr[i], w.indptr[i + 1]
        return w.indices[lo:hi], w.data[lo:hi]

    def _trees_using(self, u: int, v: int) -> list[tuple[int, int]]:
        """(tree, child) for every tree with the edge u-v, `child` being its end further from the root."""
        pred = self._pred
        below_u = np.nonzero(pred[:, v] == u)[0].tolist()
        below_v = np.nonzero(pred[:, u] == v)[0].tolist()
        return [(t, v) for t in below_u] + [(t, u) for t in below_v]

    def _reattach_subtree(self, tree: int, child: int, rewritten: list[tuple[int, int, int, int]]) -> bool:
        """The edge above `child` got dearer or went away: give its subtree new shortest paths.
        False (nothing done) when the subtree is too large for a local repair."""
        row_p, row_d = self._pred[tree], self._dist[tree]
        subtree = [child]
        i = 0
        limit = max(64, len(self.nodes) // 8)
        while i < len(subtree):
            subtree.extend(np.flatnonzero(row_p == subtree[i]).tolist())
            i += 1
            if len(subtree) > limit:
                return False
        members = np.array(subtree, dtype=np.int64)
        before = {x: (int(row_p[x]), _tenths(float(row_d[x]))) for x in subtree}
        tentative: dict[int, float] = {}
        heap: list[tuple[float, int, int]] = []
        inner_edges: dict[int, list[tuple[int, float]]] = {}
        inside = set(subtree)
        for x in subtree:
            nbrs, weights = self._slice(x)
            if len(nbrs) > _VECTOR_DEGREE:
                inner = np.isin(nbrs, members)
                via_outside = np.where(inner, np.inf, row_d[nbrs] + weights)
                k = int(np.argmin(via_outside))
                best, parent = float(via_outside[k]), int(nbrs[k])
                inner_edges[x] = list(zip(nbrs[inner].tolist(), weights[inner].tolist(), strict=True))
            else:
                best, parent = np.inf, NO_HOP
                inner_edges[x] = []
                for y, w in zip(nbrs.tolist(), weights.tolist(), strict=True):
                    if y in inside:
                        inner_edges[x].append((y, w))
                    elif row_d[y] + w < best:
                        best, parent = float(row_d[y] + w), y
            tentative[x] = best
            if best < np.inf:
                heapq.heappush(heap, (best, x, parent))
        settled: dict[int, tuple[float, int]] = {}
        while heap:
            d, x, p = heapq.heappop(heap)
            if x in settled:
                continue
            settled[x] = (d, p)
            for y, w in inner_edges[x]:
                if y not in settled and d + w < tentative[y]:
                    tentative[y] = d + w
                    heapq.heappush(heap, (d + w, y, x))
        for x in subtree:
            d, p = settled.get(x, (np.inf, NO_HOP))
            row_p[x], row_d[x] = p, d
            old_p, old_t = before[x]
            if old_p != p or old_t != _tenths(d):
                rewritten.append((tree, x, old_p, old_t))
        return True

    def _spread_improvement(
        self, tree: int, start: int, via: int, d0: float, rewritten: list[tuple[int, int, int, int]]
    ) -> None:
        """The edge via-start got cheaper (or appeared): spread the shorter distances from `start`."""
        row_p, row_d = self._pred[tree], self._dist[tree]
        heap = [(d0, start, via)]
        seen: set[int] = set()
        while heap:
            d, x, p = heapq.heappop(heap)
            if not d < row_d[x]:
                continue
            old_p, old_t = int(row_p[x]), _tenths(float(row_d[x]))
            row_p[x], row_d[x] = p, d
            if x not in seen:
                seen.add(x)
                rewritten.append((tree, x, old_p, old_t))
            nbrs, weights = self._slice(x)
            if len(nbrs) > _VECTOR_DEGREE:
                reach = d + weights
                better = reach < row_d[nbrs]
                for y, dy in zip(nbrs[better].tolist(), reach[better].tolist(), strict=True):
                    heapq.heappush(heap, (dy, y, x))
            else:
                for y, w in zip(nbrs.tolist(), weights.tolist(), strict=True):
                    if d + w < row_d[y]:
                        heapq.heappush(heap, (d + w, y, x))

    def _apply_rewrites(self, rewritten: list[tuple[int, int, int, int]]) -> set[int]:
        """Sources whose next hop or shown cost changed, with relay counts and forward flags kept."""
        changed: set[int] = set()
        touched: dict[int, bool] = {}
        for tree, x, old_p, old_t in rewritten:
            new_p = int(self._pred[tree, x])
            if new_p == old_p and _tenths(float(self._dist[tree, x])) == old_t:
                continue
            changed.add(self.nodes[x])
            if new_p == old_p:
                continue
            for p, delta in ((old_p, -1), (new_p, 1)):
                if p != NO_HOP and p != tree:
                    touched.setdefault(p, bool(self._relays[p] > 0))
                    self._relays[p] += delta
        changed.update(self.nodes[p] for p, was in touched.items() if was != (self._relays[p] > 0))
        return changed

    def _touched_trees(
        self, us: npt.NDArray[np.int64], vs: npt.NDArray[np.int64], new: FloatMatrix
    ) -> npt.NDArray[np.bool_]:
        """[tree, change]: the tree uses the changed edge (either direction), or the changed edge is
        now a shortcut in it."""
        pred, dist = self._pred, self._dist
        uses = (pred[:, vs] == us[None, :]) | (pred[:, us] == vs[None, :])
        du, dv = dist[:, us], dist[:, vs]
        shortcut = (du + new < dv * (1 + _REL_TOL)) | (dv + new < du * (1 + _REL_TOL))
        return np.asarray(uses | shortcut)

    def _write_costs(self, us: list[int], vs: list[int], costs: list[float]) -> None:
        missing: list[tuple[int, int, float]] = []
        w = self._w
        for u, v, c in zip(us, vs, costs, strict=True):
            for i, j in ((u, v), (v, u)):
                lo, hi = w.indptr[i], w.indptr[i + 1]
                k = lo + int(np.searchsorted(w.indices[lo:hi], j))
                if k < hi and w.indices[k] == j:
                    w.data[k] = c  # inf keeps the slot: a down edge costs nothing to bring back
                elif c != np.inf:
                    missing.append((i, j, c))
        if missing:
            coo = w.tocoo()
            extra = np.array(missing)
            self._w = _csr(
                np.concatenate([coo.data, extra[:, 2]]),
                np.concatenate([coo.row, extra[:, 0].astype(np.int64)]),
                np.concatenate([coo.col, extra[:, 1].astype(np.int64)]),
                len(self.nodes),
            )

    def _all_trees(self) -> tuple[IntMatrix, FloatMatrix]:
        """Every shortest-path tree. A tree whose root has a direct edge to every other node, each one
        cheaper than any path of two hops can be (the cheapest edge plus the root's cheapest), is the
        star of those edges and needs no search: in a full mesh of fresh links every tree is one."""
        w = self._w
        n = w.shape[0]
        counts = np.diff(w.indptr)
        star = np.zeros(n, dtype=bool)
        finite = np.isfinite(w.data)
        if finite.any():
            floor = float(w.data[finite].min())
            filled = counts > 0
            starts = w.indptr[:-1][filled]
            row_max = np.full(n, np.inf)
            row_min = np.full(n, np.inf)
            row_max[filled] = np.maximum.reduceat(w.data, starts)
            row_min[filled] = np.minimum.reduceat(w.data, starts)
            star = (counts == n - 1) & filled & (row_max * (1 + _REL_TOL) < floor + row_min)
        pred = np.empty((n, n), dtype=np.int32)
        dist = np.empty((n, n), dtype=np.float64)
        rest = np.flatnonzero(~star)
        if len(rest):
            pred[rest], dist[rest] = self._trees(rest)
        roots = np.flatnonzero(star)
        if len(roots):
            pred[roots] = roots[:, None].astype(np.int32)
            row_of = np.repeat(np.arange(n), counts)
            on_star = star[row_of]
            dist[row_of[on_star], w.indices[on_star]] = w.data[on_star]
            dist[roots, roots] = 0.0
        return pred, dist

    def _trees(self, trees: npt.NDArray[np.intp]) -> tuple[IntMatrix, FloatMatrix]:
        """Next hops and costs of the shortest-path trees rooted at `trees` (row i: tree trees[i])."""
        dist, pred = dijkstra(self._w, directed=True, indices=trees, return_predecessors=True)
        pred = pred.astype(np.int32, copy=False)
        pred[pred == _SCIPY_NONE] = NO_HOP
        pred[np.arange(len(trees)), trees] = trees
        return pred, dist

    def _recompute(self, trees: npt.NDArray[np.intp]) -> None:
        if len(trees) == 0:
            return
        self._pred[trees], self._dist[trees] = self._trees(trees)

    def _recompute_and_diff(self, trees: npt.NDArray[np.intp]) -> set[int]:
        if len(trees) == 0:
            return set()
        old_pred = self._pred[trees].copy()
        old_dist = self._dist[trees].copy()
        old_relays = self._relays.copy()
        self._recompute(trees)
        changed = (old_pred != self._pred[trees]).any(axis=0)
        changed |= (cost_tenths(old_dist) != cost_tenths(self._dist[trees])).any(axis=0)
        self._relays = (
            self._relays - self._relay_counts(old_pred, trees) + self._relay_counts(self._pred[trees], trees)
        )
        changed |= (old_relays > 0) != (self._relays > 0)
        return {self.nodes[i] for i in np.nonzero(changed)[0]}

    def _relay_counts(self, pred_rows: IntMatrix, trees: npt.NDArray[np.intp]) -> npt.NDArray[np.int64]:
        """How many (source, destination) pairs of these trees pass through each node."""
        n = len(self.nodes)
        if n == 0 or len(trees) == 0:
            return np.zeros(n, dtype=np.int64)
        relayed = (pred_rows >= 0) & (pred_rows != np.asarray(trees)[:, None])
        return np.bincount(pred_rows[relayed], minlength=n).astype(np.int64)


def _usable(costs: FloatMatrix) -> npt.NDArray[np.bool_]:
    """Which edge costs are valid (positive and finite); `_check_cost` says what is wrong with one."""
    with np.errstate(invalid="ignore"):
        return np.asarray((costs > 0) & np.isfinite(costs))


def _check_cost(e: EdgeCost) -> None:
    if e.a == e.b:
        raise ValueError(f"edge {e.a}-{e.b} is a loop")
    if e.cost is not None and not (e.cost > 0 and e.cost != np.inf):
        raise ValueError(f"edge {e.a}-{e.b}: cost must be positive and finite, got {e.cost}")


def _append_node(w: sp.csr_array, nbrs: npt.NDArray[np.int64], costs: FloatMatrix) -> sp.csr_array:
    """`w` with one more node (the last index) joined to sorted `nbrs`: the new column goes at the end
    of each neighbour's row, so every row stays sorted and nothing is re-sorted."""
    n = w.shape[0]
    ends = w.indptr[1:][nbrs]
    indices = np.insert(w.indices, ends, n)
    data = np.insert(w.data, ends, costs)
    grown = np.zeros(n + 1, dtype=np.int64)
    grown[nbrs + 1] = 1
    indptr = w.indptr.astype(np.int64) + np.cumsum(grown)
    indptr = np.append(indptr, indptr[-1] + len(nbrs))
    indices = np.concatenate([indices, nbrs])
    data = np.concatenate([data, costs])
    m = sp.csr_array((data, indices, indptr), shape=(n + 1, n + 1))
    m.has_sorted_indices = True
    return m


def _drop_node(w: sp.csr_array, x: int) -> sp.csr_array:
    """`w` without node x (its row and column; later indexes move down by one), rows kept sorted."""
    n = w.shape[0]
    indptr = w.indptr.astype(np.int64)
    hits = np.flatnonzero(w.indices == x)  # at most one per row
    keep = w.indices != x
    keep[indptr[x] : indptr[x + 1]] = False
    indices = w.indices[keep]
    indices -= indices > x
    counts = np.diff(indptr)
    np.subtract.at(counts, np.searchsorted(indptr, hits, side="right") - 1, 1)
    counts = np.delete(counts, x)
    m = sp.csr_array((w.data[keep], indices, np.concatenate(([0], np.cumsum(counts)))), shape=(n - 1, n - 1))
    m.has_sorted_indices = True
    return m


def _csr(data: Sequence[float] | FloatMatrix, rows: object, cols: object, n: int) -> sp.csr_array:
    m = sp.csr_array(
        (
            np.asarray(data, dtype=np.float64),
            (np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)),
        ),
        shape=(n, n),
    )
    m.sum_duplicates()
    m.sort_indices()
    return m
