"""The mesh's link graph (`LinkGraph`, networkx) and the up/down state and weight of every link; the
wire shape an admin reads (GET /v1/topology) is `wire.models.Topology`.

Rules:
- Nodes are enrolled hosts; edges are the links the policy allows (a full mesh) that are up. A failed
  link has no edge. A link nobody has measured yet is up with `default_weight_ms`.
- A link is down as soon as EITHER end reports it down: loss >= `loss_down`, or a handshake older than
  `handshake_stale_s`. A link that went down at T comes back only when an end reports a handshake newer
  than T (now - handshake_age > T), not before T + `hold_down_s`. Probes through a relay say nothing
  about the direct link (agents then report loss=None), so they never bring it back.
- Hysteresis lives on EDGE weights, never on individual routes (every node must agree on the same
  graph): an edge's weight moves to the measured value only when the measurement leaves the band
  max(band_abs_ms, band_rel * weight) around it.
- An edge's routing cost is weight + `hop_penalty_ms` + perturbation(a, b): symmetric, positive, and
  with the tiny deterministic perturbation shortest paths are unique (controller.routing relies on it).
  `default_weight_ms` < `hop_penalty_ms`, so a relay never beats a fresh direct link.
- Time is an input (`now`); nothing here reads a clock.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import networkx as nx

from controller.routing import EdgeCost
from wire.models import LinkMeasurement

TRANSIT_PENALTY_MS = 10_000.0
"""What a path pays for crossing a node that may not relay: more than any path of relays costs."""

MAX_HANDSHAKE_AGE_S = 100 * 365 * 86400.0
"""Older handshake ages (up to infinity) mean the same: long ago."""


@dataclass(frozen=True)
class LinkPolicy:
    """The knobs of link state and weights (milliseconds and seconds)."""

    default_weight_ms: float = 10.0
    hop_penalty_ms: float = 20.0
    band_abs_ms: float = 2.0
    band_rel: float = 0.2
    loss_down: float = 0.5
    loss_penalty_ms: float = 200.0
    handshake_stale_s: float = 180.0
    hold_down_s: float = 10.0
    perturbation_ms: float = 1e-3

    def problems(self) -> list[str]:
        """What is wrong with these values, one sentence each (empty: usable)."""
        out = []
        for name in ("default_weight_ms", "hop_penalty_ms", "handshake_stale_s"):
            if not getattr(self, name) > 0:
                out.append(f"{name} must be > 0")
        for name in ("band_abs_ms", "band_rel", "loss_penalty_ms", "hold_down_s"):
            if not getattr(self, name) >= 0:
                out.append(f"{name} must be >= 0")
        if not 0 < self.loss_down <= 1:
            out.append("loss_down must be in (0, 1]")
        if not 0 < self.perturbation_ms <= 0.01:
            out.append("perturbation_ms must be in (0, 0.01]")
        return out

    def perturbation(self, a: int, b: int) -> float:
        """A deterministic per-edge offset in [0, perturbation_ms), the same for a-b and b-a."""
        lo, hi = min(a, b), max(a, b)
        digest = hashlib.blake2b(f"{lo}-{hi}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 * self.perturbation_ms

    def cost(self, a: int, b: int, weight: float | None) -> float:
        w = self.default_weight_ms if weight is None else weight
        return w + self.hop_penalty_ms + self.perturbation(a, b)


@dataclass(frozen=True, slots=True)
class Sample:
    """One end's latest report about the direct link."""

    rtt_ms: float | None
    loss: float | None
    handshake_age_s: float | None
    at: datetime


@dataclass(frozen=True)
class LinkRecord:
    """What survives a restart about a link: its routing weight and since when it is down."""

    a: int
    b: int
    weight: float | None = None  # None: never measured, the default weight applies
    down_since: datetime | None = None  # None: up


@dataclass(slots=True)
class LinkState:
    a: int
    b: int
    weight: float | None = None
    down_since: datetime | None = None
    samples: dict[int, Sample] = field(default_factory=dict)  # by reporting end; not persisted

    def record(self) -> LinkRecord:
        return LinkRecord(self.a, self.b, self.weight, self.down_since)


@dataclass(frozen=True)
class LinkGraphUpdate:
    edges: list[EdgeCost]  # routing changes: cost None = edge removed
    records: list[LinkRecord]  # link state to persist


def pair(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)


class LinkGraph:
    """The link graph. `graph` edges carry `weight` (ms, after hysteresis) and `cost` (routing)."""

    def __init__(
        self, policy: LinkPolicy, node_ids: Iterable[int], records: Iterable[LinkRecord] = ()
    ) -> None:
        self.policy = policy
        self.transit: dict[int, float] = {}  # node -> what each of its edges adds (nodes that may not relay)
        self.graph = nx.Graph()
        self.graph.add_nodes_from(sorted(node_ids))
        # Only links with something to remember get a state; the others are fresh and up.
        self.links: dict[tuple[int, int], LinkState] = {}
        for r in records:
            if r.a in self.graph and r.b in self.graph and r.a != r.b:
                a, b = pair(r.a, r.b)
                self.links[a, b] = LinkState(a, b, r.weight, r.down_since)
        nodes = list(self.graph.nodes)
        self.graph.add_edges_from(
            (a, b, self._edge_attrs(a, b))
            for a, b in itertools.combinations(nodes, 2)
            if self.allowed(a, b) and self._is_up(a, b)
        )

    # --- policy ----------------------------------------------------------------------------------

    def allowed(self, a: int, b: int) -> bool:
        """Which links may exist. The default policy is a full mesh."""
        return a != b

    # --- queries ---------------------------------------------------------------------------------

    def edges(self) -> list[EdgeCost]:
        return [EdgeCost(a, b, d["cost"]) for a, b, d in self.graph.edges(data=True)]

    def edges_of(self, node: int) -> list[EdgeCost]:
        return [EdgeCost(node, other, d["cost"]) for other, d in self.graph.adj[node].items()]

    def link(self, a: int, b: int) -> LinkState | None:
        return self.links.get(pair(a, b))

    # --- changes ---------------------------------------------------------------------------------

    def add_node(self, node: int) -> list[EdgeCost]:
        if node in self.graph:
            raise ValueError(f"node {node} is already in the topology")
        others = list(self.graph.nodes)
        self.graph.add_node(node)
        for other in others:
            if self.allowed(node, other):
                a, b = pair(node, other)
                self.graph.add_edge(a, b, **self._edge_attrs(a, b))
        return self.edges_of(node)

    def set_transit(self, penalties: Mapping[int, float]) -> bool:
        """Set the per-edge penalty of the nodes that may not relay (see the module rules); True when
        any edge's cost changed (the caller then rebuilds its routes: every tree may move)."""
        wanted = {n: p for n, p in penalties.items() if p}
        if wanted == self.transit:
            return False
        changed = {n for n in self.transit.keys() | wanted.keys() if self.transit.get(n) != wanted.get(n)}
        self.transit = wanted
        for n in changed & set(self.graph.nodes):
            for other in self.graph.adj[n]:
                self.graph[n][other].update(self._edge_attrs(*pair(n, other)))
        return True

    def remove_node(self, node: int) -> None:
        self.transit.pop(node, None)
        for other in list(self.graph.nodes):
            self.links.pop(pair(node, other), None)
        self.graph.remove_node(node)

    def report(
        self, reporter: int, measurements: Sequence[LinkMeasurement], now: datetime
    ) -> LinkGraphUpdate:
        """Take one node's measurements of its direct links. Unknown peers must be refused before."""
        edges: list[EdgeCost] = []
        records: list[LinkRecord] = []
        for m in measurements:
            a, b = pair(reporter, m.peer_id)
            if not self.allowed(a, b):
                continue
            state = self.links.get((a, b))
            if state is None:
                state = self.links[a, b] = LinkState(a, b)
            before = (state.weight, state.down_since)
            self._take(state, reporter, m, now)
            if (state.weight, state.down_since) == before:
                continue
            records.append(state.record())
            edges += self._place_edge(a, b, state)
        return LinkGraphUpdate(edges, records)

    def set_records(self, records: Iterable[LinkRecord]) -> list[EdgeCost]:
        """Take link state another replica decided (from the store); the samples here stay as they are."""
        edges: list[EdgeCost] = []
        for r in records:
            a, b = pair(r.a, r.b)
            if a == b or a not in self.graph or b not in self.graph or not self.allowed(a, b):
                continue
            state = self.links.get((a, b))
            if state is None:
                state = self.links[a, b] = LinkState(a, b)
            if (state.weight, state.down_since) == (r.weight, r.down_since):
                continue
            state.weight, state.down_since = r.weight, r.down_since
            edges += self._place_edge(a, b, state)
        return edges

    # --- internals -------------------------------------------------------------------------------

    def _place_edge(self, a: int, b: int, state: LinkState) -> list[EdgeCost]:
        """Make the graph's a-b edge follow the link's state: gone while it is down, else with its cost.
        The edge costs that changed (none when a down link had no edge)."""
        if state.down_since is not None:
            if not self.graph.has_edge(a, b):
                return []
            self.graph.remove_edge(a, b)
            return [EdgeCost(a, b, None)]
        attrs = self._edge_attrs(a, b)
        self.graph.add_edge(a, b, **attrs)
        return [EdgeCost(a, b, attrs["cost"])]

    def _is_up(self, a: int, b: int) -> bool:
        state = self.links.get((a, b))
        return state is None or state.down_since is None

    def _edge_attrs(self, a: int, b: int) -> dict[str, float]:
        state = self.links.get((a, b))
        weight = None if state is None else state.weight
        transit = self.transit.get(a, 0.0) + self.transit.get(b, 0.0)
        return {
            "weight": self.policy.default_weight_ms if weight is None else weight,
            "cost": self.policy.cost(a, b, weight) + transit,
        }

    def _reports_down(self, m: LinkMeasurement) -> bool:
        p = self.policy
        lossy = m.loss is not None and m.loss >= p.loss_down
        stale = m.handshake_age_s is not None and m.handshake_age_s > p.handshake_stale_s
        return lossy or stale

    def _take(self, state: LinkState, reporter: int, m: LinkMeasurement, now: datetime) -> None:
        p = self.policy
        sample = Sample(m.rtt_ms, m.loss, m.handshake_age_s, now)
        if state.down_since is None:
            if self._reports_down(m):
                state.down_since = now
                state.samples.clear()
                return
            state.samples[reporter] = sample
        else:
            t = state.down_since
            handshake_after_down = (
                m.handshake_age_s is not None
                and now - timedelta(seconds=min(m.handshake_age_s, MAX_HANDSHAKE_AGE_S)) > t
            )
            held_down_long_enough = now >= t + timedelta(seconds=p.hold_down_s)
            if not (handshake_after_down and held_down_long_enough and not self._reports_down(m)):
                return
            state.down_since = None
            state.samples = {reporter: sample}
        measured = self._measured(state)
        if measured is None:
            return
        w = state.weight
        if w is None or abs(measured - w) > max(p.band_abs_ms, p.band_rel * w):
            state.weight = measured

    def _measured(self, state: LinkState) -> float | None:
        """The link's cost as measured now: mean over both ends of rtt + loss penalty."""
        values = [
            s.rtt_ms + self.policy.loss_penalty_ms * (s.loss or 0.0)
            for s in state.samples.values()
            if s.rtt_ms is not None
        ]
        return sum(values) / len(values) if values else None
