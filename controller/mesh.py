"""The mesh model: the controller's in-memory view of nodes, links, routes and every node's map serial.

It composes controller.topology (link state), controller.routing (next hops) and controller.netmap
(rendering), and decides which maps really changed: a node's serial grows only when the digest of its
new map differs from the stored one. It does no I/O and reads no clock: the caller persists the
returned `MeshChange` and wakes the agents it names.

For deltas it keeps, per node, what its maps at the last `MAP_HISTORY` serials were rendered from
(in a direct full mesh a few bytes per kept map: see `MapInputs`): an agent holding one of those gets a delta, any other a full map.
Nothing of it is persisted: after a restart every agent gets a full map first.

Serials are mesh versions: a map that changes while the mesh goes to version `version` (set by the
caller before each change) takes serial `version` (at least one more than before), so replicas that
apply the same changes give the same content the same serial, and an agent that moves to another
replica either holds that replica's current serial with the same content, or gets a full map.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt

from controller.access import Access, PolicyMasks, subject_of
from controller.netmap import (
    COMPACT_ODD,
    CompactRow,
    MapInputs,
    NodeCard,
    NodeCards,
    compact_rows,
    map_digest,
    render_delta,
    render_map,
)
from controller.routing import DefaultLinks, Router, cost_tenths
from controller.topology import TRANSIT_PENALTY_MS, Flag, LinkGraph, LinkPolicy, LinkRecord, SampleRecord
from wire.models import IPNetwork, LinkMeasurement, Route, TopologyEdge
from wire.policy import PolicyDocument, may_relay

MAP_HISTORY = 3
"""Maps kept per node to diff from: the current one and the two before it."""
REFRESH_BLOCK = 256
"""Nodes whose routing rows are read at once when maps are refreshed."""


@dataclass(frozen=True)
class MapState:
    """A node's current map serial and the digest of that map's content."""

    serial: int
    digest: str


@dataclass
class MeshChange:
    maps: dict[int, MapState] = field(default_factory=dict)  # nodes whose map changed: new serial
    links: list[LinkRecord] = field(default_factory=list)  # link state to persist
    flags: list[Flag] = field(default_factory=list)  # implausible link reports (nothing to persist)
    samples: list[SampleRecord] = field(default_factory=list)  # link samples for the other replicas

    def __bool__(self) -> bool:
        return bool(self.maps or self.links or self.samples)


class Mesh:
    def __init__(
        self,
        mesh_cidr: IPNetwork,
        policy: LinkPolicy,
        keepalive_s: int | None,
        cards: Iterable[NodeCard],
        links: Iterable[LinkRecord] = (),
        maps: Mapping[int, MapState] | None = None,
        version: int = 0,
        access: tuple[PolicyDocument, int] | None = None,
        samples: Iterable[SampleRecord] = (),
    ) -> None:
        self.version = version
        """The mesh version the next changed maps take as their serial."""
        self.mesh_cidr = mesh_cidr
        self.access_policy = access
        self.policy = policy
        self.keepalive_s = keepalive_s
        self.cards: dict[int, NodeCard] = {c.node_id: c for c in cards}
        self.topology = LinkGraph(policy, self.cards, links, samples)
        self.topology.set_transit(self._transit())
        self.router = self._new_router()
        self._maps: dict[int, MapState] = {n: s for n, s in (maps or {}).items() if n in self.cards}
        self._inputs: dict[int, dict[int, MapInputs]] = {}  # node -> serial -> what that map was made of
        # node -> (its firewall and message rights under the policy, the version they last changed at):
        # a policy change that leaves a node's rules alone leaves its map alone
        self._rules: dict[int, tuple[bytes, int]] = {}
        self._masks: tuple[NodeCards, PolicyMasks] | None = None  # for the directory and policy in force
        self._shown: Access | None = None  # the policy's meaning on the current trees, for queries
        self._directory = self._new_directory()
        self.initial = MeshChange(maps=self._refresh(self.cards))
        """What start-up changed (maps whose stored digest no longer matches): persist it."""

    # --- queries ---------------------------------------------------------------------------------

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.cards

    def serial(self, node_id: int) -> int:
        return self._maps[node_id].serial

    def policy_version(self, node_id: int) -> int | None:
        """The policy version of the rules in the node's current map; None: no policy."""
        held = self._rules.get(node_id)
        return None if held is None or self.access_policy is None else held[1]

    def map_state(self, node_id: int) -> MapState:
        return self._maps[node_id]

    def render(self, node_id: int, with_kind: bool = False) -> bytes:
        """The node's current NetMap as JSON (`with_kind`: with `"kind":"full"`)."""
        serial = self._maps[node_id].serial
        return render_map(self._inputs[node_id][serial], serial, with_kind)

    def render_update(self, node_id: int, since: int) -> bytes:
        """The answer to a delta poll from a node holding map `since`: a NetMapDelta from `since` to
        the current map when map `since` is still kept, else the full map with its kind."""
        serial = self._maps[node_id].serial
        kept = self._inputs[node_id]
        if since != serial and since in kept:
            return render_delta(kept[since], kept[serial], since, serial)
        return render_map(kept[serial], serial, with_kind=True)

    def routes_of(self, node_id: int) -> list[Route]:
        """The node's routes now, as its map would have them (under a policy: only the destinations it
        may route to, and never across a node that may not relay), with today's costs."""
        index = self.router.index[node_id]
        ids = self.router.nodes
        row = self.router.next_hop_row(node_id)
        tenths = cost_tenths(self._shown_costs([node_id], *self.router.rows_of([node_id])))[0]
        positions = np.arange(len(ids))
        via = np.where(row >= 0, row, positions)
        relayed = via != positions
        shown = np.ones(len(ids), dtype=bool)
        has_cost = np.ones(len(ids), dtype=bool)
        access = self._access_now()
        if access is not None:
            node = access.node(index, 0, b"")
            relayed &= node.relayed
            shown = node.routes
            has_cost = relayed | (row == positions) | (row < 0)
        shown[index] = False
        return [
            Route.model_construct(
                destination=ids[k],
                destination_address=self.cards[ids[k]].tunnel_address,
                via=ids[int(via[k])] if relayed[k] else ids[k],
                cost=int(tenths[k]) / 10 if has_cost[k] and tenths[k] >= 0 else None,
            )
            for k in np.nonzero(shown)[0].tolist()
        ]

    def forwards(self, node_id: int) -> bool:
        """The node carries others' traffic (under a policy: only what the policy lets it relay)."""
        access = self._access_now()
        if access is None:
            return self.router.forwards(node_id)
        return access.forwards(self.router.index[node_id])

    def implausible_reports(self, node_id: int) -> int:
        """How many link measurements from this node were implausible (see controller.topology)."""
        return self.topology.implausible.get(node_id, 0)

    def edge_rows(self) -> list[tuple[int, int, float, float | None, float | None]]:
        """The up links that were measured or have a remembered weight, by (a, b), as (a, b, weight,
        mean rtt_ms, worst loss); the others are up with the default weight and only counted
        (`unmeasured_links`). Plain values: safe to hand to another thread."""
        out = []
        topology = self.topology
        for (lo, hi), state in sorted(topology.links.items()):
            weight = topology.weight(lo, hi)
            if weight is None:
                continue  # down
            rtts = [s.rtt_ms for s in state.samples.values() if s.rtt_ms is not None]
            losses = [s.loss for s in state.samples.values() if s.loss is not None]
            rtt = round(sum(rtts) / len(rtts), 3) if rtts else None
            out.append((lo, hi, round(weight, 3), rtt, max(losses) if losses else None))
        return out

    def edges(self) -> list[TopologyEdge]:
        """`edge_rows` as wire records."""
        return [edge(row) for row in self.edge_rows()]

    def unmeasured_links(self, listed: int) -> int:
        """How many up links `edges` leaves out, given how many it listed."""
        return self.topology.up_links() - listed

    def link_use(self) -> Callable[[int, int], bool]:
        """Whether the link a-b carries at least one route (node ids), without listing every link."""
        return self.router.carries

    # --- changes ---------------------------------------------------------------------------------

    def upsert(self, card: NodeCard) -> MeshChange:
        """A node enrolled, or re-enrolled (maybe with new keys or endpoints)."""
        old = self.cards.get(card.node_id)
        if old == card:
            return MeshChange()
        self.cards[card.node_id] = card
        if old is None:
            self.topology.transit.pop(card.node_id, None)
            penalty = self._transit([card]).get(card.node_id)
            if penalty:
                self.topology.transit[card.node_id] = penalty
            edges = self.topology.add_node(card.node_id)
            if self.router.nodes and card.node_id < self.router.nodes[-1]:
                self.router = self._new_router()
            else:
                self.router.add_node(card.node_id, edges, self.topology.transit.get(card.node_id, 0.0))
        elif self.topology.set_transit(self._transit()):
            self.router = self._new_router()  # its tags changed its relay right
        self._directory = self._new_directory()
        return MeshChange(maps=self._refresh(self.cards))

    def remove(self, node_id: int) -> MeshChange:
        """A node left: every remaining map changes (one peer fewer)."""
        del self.cards[node_id]
        self._maps.pop(node_id, None)
        self._inputs.pop(node_id, None)
        self._rules.pop(node_id, None)
        self.topology.remove_node(node_id)
        self.router.remove_node(node_id)
        self._directory = self._new_directory()
        return MeshChange(maps=self._refresh(self.cards))

    def set_policy(self, access: tuple[PolicyDocument, int] | None, cards: Iterable[NodeCard]) -> MeshChange:
        """A new policy (document, version; None: none, the full mesh) with the cards it gives new tags."""
        self.access_policy = access
        if access is None:
            self._rules.clear()  # a later policy's rules are new to every node
        retagged = [c for c in cards if self.cards.get(c.node_id) != c]
        for card in retagged:
            self.cards[card.node_id] = card
        if self.topology.set_transit(self._transit()):
            self.router = self._new_router()  # relay rights moved: every tree may
        if retagged:
            self._directory = self._new_directory()
        return MeshChange(maps=self._refresh(self.cards))

    def report(self, reporter: int, measurements: Sequence[LinkMeasurement], now: datetime) -> MeshChange:
        """One node's link measurements (peers already checked to be other known nodes)."""
        update = self.topology.report(reporter, measurements, now)
        changed = self.router.set_edges(update.edges)
        if changed and self.access_policy is not None:
            changed = set(self.cards)  # who relays for whom moved: any map may change
        return MeshChange(
            maps=self._refresh(changed), links=update.records, flags=update.flags, samples=update.samples
        )

    def set_links(self, records: Sequence[LinkRecord], samples: Sequence[SampleRecord] = ()) -> MeshChange:
        """Link state another replica decided, and the samples it shared (read from the store)."""
        changed = self.router.set_edges(self.topology.set_records(records, samples))
        return MeshChange(maps=self._refresh(changed))

    # --- internals -------------------------------------------------------------------------------

    def _new_router(self) -> Router:
        """Routes over the implicit full mesh: the links with state, every other one a default link."""
        return Router(self.cards, self.topology.edges(), self.topology.defaults())

    def _transit(self, cards: Iterable[NodeCard] | None = None) -> dict[int, float]:
        """Half the transit penalty for every node the policy in force does not let relay."""
        if self.access_policy is None:
            return {}
        doc = self.access_policy[0]
        return {
            c.node_id: TRANSIT_PENALTY_MS / 2
            for c in (self.cards.values() if cards is None else cards)
            if not may_relay(doc, subject_of(c))
        }

    def _access_now(self) -> Access | None:
        """The policy's meaning on the current trees (None: no policy), kept until the next change."""
        if self.access_policy is None:
            return None
        if self._shown is None:
            self._shown = Access(self._policy_masks(), self.router)
        return self._shown

    def _policy_masks(self) -> PolicyMasks:
        assert self.access_policy is not None
        doc = self.access_policy[0]
        masks = self._masks
        if masks is None or masks[0] is not self._directory or masks[1].doc is not doc:
            masks = self._masks = (self._directory, PolicyMasks(doc, self._directory.cards))
        return masks[1]

    def _shown_costs(
        self, nodes: Sequence[int], rows: npt.NDArray[np.int32], costs: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        """Path costs of `nodes` as maps show them: without the halves of the transit penalty their
        two ends pay for not relaying."""
        if not self.topology.transit:
            return costs
        pen = np.array([self.topology.transit.get(n, 0.0) for n in self.router.nodes])
        own = pen[[self.router.index[n] for n in nodes]]
        return np.asarray(np.maximum(costs - pen[None, :] - own[:, None], 0.0))

    def _new_directory(self) -> NodeCards:
        return NodeCards([self.cards[n] for n in self.router.nodes], self.mesh_cidr, self.keepalive_s)

    def _refresh(self, candidates: Iterable[int]) -> dict[int, MapState]:
        self._shown = None  # every change comes through here: the trees or the policy may have moved
        nodes = list(candidates)
        changed: dict[int, MapState] = {}
        if not nodes:
            return changed
        access = None
        if self.access_policy is not None:
            access = self._shown = Access(self._policy_masks(), self.router)
        common = _uniform_tenths(self.topology.defaults()) if access is None else None
        if common is not None:
            # Without a policy a node's row is direct at the default cost except toward its own links
            # with a state and the destinations it relays: those few are read, never the whole row.
            odd = self._odd_destinations()
            whole = []
            for node in nodes:
                few = odd.get(node, ())
                if len(few) < COMPACT_ODD:
                    self._refresh_sparse(node, common, few, changed)
                else:
                    whole.append(node)
            nodes = whole
        # The routing rows come in blocks: all of them at once would be nodes x nodes of them.
        for start in range(0, len(nodes), REFRESH_BLOCK):
            block = nodes[start : start + REFRESH_BLOCK]
            rows, costs = self.router.rows_of(block)
            tenths = cost_tenths(self._shown_costs(block, rows, costs)).astype(np.int32)
            compact = compact_rows(rows, tenths)
            for i, node in enumerate(block):
                self._refresh_one(node, rows[i], tenths[i], compact[i], access, changed)
        return changed

    def _odd_destinations(self) -> dict[int, set[int]]:
        """Per node, the destinations its row may not reach directly at the default cost: the other
        ends of its links with a state (measured or down), and the destinations it relays."""
        odd: dict[int, set[int]] = {}
        for a, b in self.topology.links:
            odd.setdefault(a, set()).add(b)
            odd.setdefault(b, set()).add(a)
        ids = self.router.nodes
        for s, d in self.router.relayed_pairs().tolist():
            odd.setdefault(ids[s], set()).add(ids[d])
            odd.setdefault(ids[d], set()).add(ids[s])
        return odd

    def _refresh_sparse(
        self, node: int, common: int, odd: Iterable[int], changed: dict[int, MapState]
    ) -> None:
        """`_refresh_one` for a row made of its odd destinations only (see `_refresh`)."""
        router, transit = self.router, self.topology.transit
        index = router.index
        own = transit.get(node, 0.0)
        entries = {index[node]: (index[node], 0)}
        for d in odd:
            if d not in index:
                continue
            hop, cost = router.next_hop(node, d), router.cost(node, d)
            shown = -1 if cost is None else _tenths(max(cost - transit.get(d, 0.0) - own, 0.0))
            entries[index[d]] = (-1 if hop is None else index[hop], shown)
        self._keep(
            node,
            MapInputs.of_row(self._directory, index[node], (common, entries), router.forwards(node)),
            changed,
        )

    def _refresh_one(
        self,
        node: int,
        row: npt.NDArray[np.int32],
        tenths: npt.NDArray[np.int32],
        compact: CompactRow,
        access: Access | None,
        changed: dict[int, MapState],
    ) -> None:
        index = self.router.index[node]
        node_access = None
        if access is not None:
            assert self.access_policy is not None
            rules = access.rules_json(index)
            held = self._rules.get(node)
            rules_version = held[1] if held is not None and held[0] == rules else self.access_policy[1]
            self._rules[node] = (rules, rules_version)
            node_access = access.node(index, rules_version, rules)
        forward = self.router.forwards(node) if node_access is None else node_access.forward
        self._keep(
            node, MapInputs(self._directory, index, row, tenths, forward, node_access, compact), changed
        )

    def _keep(self, node: int, inputs: MapInputs, changed: dict[int, MapState]) -> None:
        """The node's map is now the one made of `inputs`: a new serial when its digest moved."""
        digest = map_digest(inputs).hex()
        old = self._maps.get(node)
        if old is None or old.digest != digest:
            serial = max(self.version, (old.serial if old else 0) + 1)
            self._maps[node] = changed[node] = MapState(serial, digest)
        serial = self._maps[node].serial
        kept = self._inputs.setdefault(node, {})
        if serial not in kept:
            kept[serial] = inputs
            for old_serial in sorted(kept)[:-MAP_HISTORY]:
                del kept[old_serial]


def _uniform_tenths(defaults: DefaultLinks) -> int | None:
    """The cost every default link shows, in tenths, when the per-pair jitter cannot move it (None: it
    can, and rows are read whole)."""
    low, high = defaults.base * 10, (defaults.base + defaults.jitter) * 10
    margin = 1e-6
    if (
        round(low) != round(high)
        or abs(low - np.floor(low) - 0.5) < margin
        or abs(high - np.floor(high) - 0.5) < margin
    ):
        return None
    return _tenths(defaults.base)


def _tenths(cost: float) -> int:
    """One cost as `controller.routing.cost_tenths` shows it."""
    return int(cost_tenths(np.array([cost]))[0])


def edge(row: tuple[int, int, float, float | None, float | None]) -> TopologyEdge:
    a, b, weight, rtt_ms, loss = row
    return TopologyEdge.model_construct(a=a, b=b, weight=weight, rtt_ms=rtt_ms, loss=loss)
