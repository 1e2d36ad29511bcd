"""The mesh's link graph (`LinkGraph`) and the up/down state and weight of every link; the wire shape
an admin reads (GET /v1/topology) is `wire.models.Topology`.

Rules:
- Nodes are enrolled hosts; edges are the links the policy allows (a full mesh) that are up. A failed
  link has no edge. A link nobody has measured yet is up with `default_weight_ms`.
- Only links with state (measured, down, remembered) are stored; every other pair is an implicit
  default link (`defaults()`: what controller.routing needs to cost it without storing it). Memory is
  O(nodes + links with state).
- Measurements are claims (a node that says rtt 0 to two others would draw their traffic through
  itself). So one end alone can only RAISE a link's weight: a link's measured value is the worse of
  the two ends' smoothed reports, and while only one end has a fresh report (within
  `sample_max_age_s`) it is at least the weight the link already has. Implausible reports are
  flagged and counted per reporter (`implausible`): an rtt below `min_rtt_ms`, or one far below what
  the other end sees (under `implausible_ratio` of it and more than `implausible_gap_ms` apart) when
  the other end measured that AFTER this end's previous report, which was already far below. A single
  low report is not enough: when a link heals the first end to report is a round ahead of the other
  (`lab heal` after `lab delay`), not lying. The rule above already keeps them from steering anything.
- A link is down as soon as EITHER end reports it down (that only raises its weight): loss >=
  `loss_down`, or a handshake older than `handshake_stale_s`. A link that went down at T comes back
  only when BOTH ends, in reports made after T + `hold_down_s`, see it working: a handshake newer than
  T (now - handshake_age > T) or a probe answered over the direct path, and loss below `loss_down`.
  Probes through a relay say nothing about the direct link (agents then report loss=None).
- Each end's reports are smoothed (EWMA, weight `smoothing` for the newest) before they are combined.
- A link nobody measures goes back to direct in the end: a relayed pair is probed over its direct path
  only where both ends have probe addresses (agent.desired), so in a mixed mesh (IPv6 off, an older
  agent) neither end may report an rtt for it. An up link whose weight is above `default_weight_ms`
  and for which no end reported an rtt for `unmeasured_retry_s` returns to the default weight: it is
  tried direct, where it is probed on the tunnel addresses, and goes back to the relay if still slow.
- Hysteresis lives on EDGE weights, never on individual routes (every node must agree on the same
  graph): an edge's weight moves to the measured value only when the measurement leaves the band
  max(band_abs_ms, band_rel * weight) around it. On the way down, when both ends' latest reports are
  below the band too (a link that healed), the weight drops at once to the worse of those and both
  ends' smoothing restarts there: stepping down through the smoothed values would cross the point
  where the direct cost equals a relay's, where one noisy round flips the route back (flapping).
- An edge's routing cost is weight + `hop_penalty_ms` + perturbation(a, b) (+ the transit penalties of
  its ends): symmetric, positive, and with the tiny deterministic perturbation (`routing.pair_jitter`,
  vectorized) shortest paths are unique (controller.routing relies on it).
  `default_weight_ms` < `hop_penalty_ms`, so a relay never beats a fresh direct link.
- Replicas: the two ends of a link may report to different controller replicas, and each replica holds
  the samples of the reports it took. So an end's sample is shared (`LinkGraphUpdate.samples`, kept in
  the store, given to the other replicas' graphs by `set_records`) when it is CONTESTED: this replica
  has no fresh sample of the other end, and the sample would lower the link's weight (its smoothed
  value below the band) or bring a down link back (it sees it working after the hold-down). A
  contested end is shared at most every `share_every_s`. A record written carries every sample the
  deciding replica holds for the link (the smoothing restarts there travel with it; a newer sample held
  elsewhere restarts at its own latest report when the record lowers the weight). Both rules above
  hold across replicas: a replica decides on both ends' samples only when it holds both. Noise inside
  the band shares nothing.
- Time is an input (`now`); nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from controller.routing import DefaultLinks, EdgeCost, pair_jitter
from wire.models import LinkMeasurement

TRANSIT_PENALTY_MS = 1e9
"""What a path pays for crossing a node that may not relay: more than any path of relays costs (over
1,600 hops of the largest weight a report can give), so such a node is crossed only when nothing else
connects the pair, and controller.access then keeps the pair direct. Small enough that costs keep
their precision to far below the perturbation."""

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
    smoothing: float = 0.5
    sample_max_age_s: float = 60.0
    min_rtt_ms: float = 0.01
    implausible_ratio: float = 0.25
    implausible_gap_ms: float = 10.0
    unmeasured_retry_s: float = 300.0
    share_every_s: float = 30.0  # half of sample_max_age_s: what was shared stays fresh

    def problems(self) -> list[str]:
        """What is wrong with these values, one sentence each (empty: usable)."""
        out = []
        for name in (
            "default_weight_ms",
            "hop_penalty_ms",
            "handshake_stale_s",
            "sample_max_age_s",
            "unmeasured_retry_s",
        ):
            if not getattr(self, name) > 0:
                out.append(f"{name} must be > 0")
        for name in (
            "band_abs_ms",
            "band_rel",
            "loss_penalty_ms",
            "hold_down_s",
            "min_rtt_ms",
            "implausible_gap_ms",
            "share_every_s",
        ):
            if not getattr(self, name) >= 0:
                out.append(f"{name} must be >= 0")
        if not 0 < self.loss_down <= 1:
            out.append("loss_down must be in (0, 1]")
        for name in ("smoothing", "implausible_ratio"):
            if not 0 < getattr(self, name) <= 1:
                out.append(f"{name} must be in (0, 1]")
        if not 0 < self.perturbation_ms <= 0.01:
            out.append("perturbation_ms must be in (0, 0.01]")
        return out

    def perturbation(self, a: int, b: int) -> float:
        """A deterministic per-edge offset in [0, perturbation_ms), the same for a-b and b-a."""
        return float(pair_jitter([a], [b], self.perturbation_ms)[0])

    def cost(self, a: int, b: int, weight: float | None) -> float:
        w = self.default_weight_ms if weight is None else weight
        return w + self.hop_penalty_ms + self.perturbation(a, b)


@dataclass(frozen=True, slots=True)
class Sample:
    """One end's latest report about the direct link, and its smoothed value (rtt + loss penalty,
    an EWMA over this end's reports since the link last changed state; None: no rtt yet)."""

    rtt_ms: float | None
    loss: float | None
    handshake_age_s: float | None
    at: datetime
    smoothed: float | None = None
    far_below: bool = False  # its rtt was far below the other end's latest (see `_implausible`)


@dataclass(frozen=True, slots=True)
class Flag:
    """An implausible report: who made it, about which peer, and why."""

    reporter: int
    peer: int
    reason: str


@dataclass(frozen=True)
class LinkRecord:
    """What survives a restart about a link: its routing weight and since when it is down."""

    a: int
    b: int
    weight: float | None = None  # None: never measured, the default weight applies
    down_since: datetime | None = None  # None: up


@dataclass(frozen=True, slots=True)
class SampleRecord:
    """One end's sample of the link a-b (a < b), as replicas share it through the store."""

    a: int
    b: int
    end: int
    sample: Sample


@dataclass(slots=True)
class LinkState:
    a: int
    b: int
    weight: float | None = None
    down_since: datetime | None = None
    samples: dict[int, Sample] = field(default_factory=dict)  # by reporting end (shared when contested)
    measured_at: datetime | None = None  # when an end last reported an rtt (or first reported); not persisted
    shared: dict[int, datetime] = field(default_factory=dict)  # end -> when its contested sample was shared

    def record(self) -> LinkRecord:
        return LinkRecord(self.a, self.b, self.weight, self.down_since)

    def sample_records(self) -> list[SampleRecord]:
        return [SampleRecord(self.a, self.b, end, s) for end, s in sorted(self.samples.items())]


@dataclass(frozen=True)
class LinkGraphUpdate:
    edges: list[EdgeCost]  # routing changes: cost None = edge removed
    records: list[LinkRecord]  # link state to persist
    flags: list[Flag] = field(default_factory=list)  # implausible reports in this batch
    samples: list[SampleRecord] = field(default_factory=list)  # samples to share (see the module rules)


def pair(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)


class LinkGraph:
    """The link graph: the nodes, and the state of the links that have one (the others are up at the
    default weight)."""

    def __init__(
        self,
        policy: LinkPolicy,
        node_ids: Iterable[int],
        records: Iterable[LinkRecord] = (),
        samples: Iterable[SampleRecord] = (),
    ) -> None:
        self.policy = policy
        self.transit: dict[int, float] = {}  # node -> what each of its edges adds (nodes that may not relay)
        self.implausible: dict[int, int] = {}  # reporter -> how many implausible measurements it sent
        self.nodes: set[int] = set(node_ids)
        # Only links with something to remember get a state; the others are fresh and up.
        self.links: dict[tuple[int, int], LinkState] = {}
        for r in records:
            if r.a in self.nodes and r.b in self.nodes and r.a != r.b:
                a, b = pair(r.a, r.b)
                self.links[a, b] = LinkState(a, b, r.weight, r.down_since)
        self._take_samples(samples)

    # --- policy ----------------------------------------------------------------------------------

    def allowed(self, a: int, b: int) -> bool:
        """Which links may exist. The default policy is a full mesh."""
        return a != b

    # --- queries ---------------------------------------------------------------------------------

    def defaults(self) -> DefaultLinks:
        """How controller.routing costs a link without state: exactly `cost(a, b)` of a fresh link."""
        p = self.policy
        return DefaultLinks(p.default_weight_ms + p.hop_penalty_ms, p.perturbation_ms, dict(self.transit))

    def edges(self) -> list[EdgeCost]:
        """The edges that differ from a default link: down (cost None) or with a weight of their own."""
        out = []
        for (a, b), state in self.links.items():
            if state.down_since is not None:
                out.append(EdgeCost(a, b, None))
            elif state.weight is not None:
                out.append(EdgeCost(a, b, self.cost(a, b)))
        return out

    def link(self, a: int, b: int) -> LinkState | None:
        return self.links.get(pair(a, b))

    def is_up(self, a: int, b: int) -> bool:
        """The link a-b exists (both ends are nodes, the policy allows it) and is not down."""
        return a in self.nodes and b in self.nodes and self.allowed(a, b) and self._is_up(*pair(a, b))

    def weight(self, a: int, b: int) -> float | None:
        """The link's routing weight in ms (the default when never measured); None when it is down."""
        if not self.is_up(a, b):
            return None
        state = self.links.get(pair(a, b))
        return self.policy.default_weight_ms if state is None or state.weight is None else state.weight

    def cost(self, a: int, b: int) -> float | None:
        """The link's routing cost (see the module rules); None when it is down."""
        if not self.is_up(a, b):
            return None
        lo, hi = pair(a, b)
        state = self.links.get((lo, hi))
        return self.policy.cost(lo, hi, None if state is None else state.weight) + (
            self.transit.get(lo, 0.0) + self.transit.get(hi, 0.0)
        )

    def up_links(self) -> int:
        """How many links are up (the full mesh less the down ones)."""
        n = len(self.nodes)
        down = sum(1 for s in self.links.values() if s.down_since is not None)
        return n * (n - 1) // 2 - down

    # --- changes ---------------------------------------------------------------------------------

    def add_node(self, node: int) -> list[EdgeCost]:
        """A new node: its links are default links (no state yet), so there is no edge to return."""
        if node in self.nodes:
            raise ValueError(f"node {node} is already in the topology")
        self.nodes.add(node)
        return []

    def set_transit(self, penalties: Mapping[int, float]) -> bool:
        """Set the per-edge penalty of the nodes that may not relay (see the module rules); True when
        any edge's cost changed (the caller then rebuilds its routes: every tree may move)."""
        wanted = {n: p for n, p in penalties.items() if p}
        if wanted == self.transit:
            return False
        self.transit = wanted
        return True

    def remove_node(self, node: int) -> None:
        self.transit.pop(node, None)
        self.implausible.pop(node, None)
        for other in self.nodes:
            self.links.pop(pair(node, other), None)
        self.nodes.discard(node)

    def report(
        self, reporter: int, measurements: Sequence[LinkMeasurement], now: datetime
    ) -> LinkGraphUpdate:
        """Take one node's measurements of its direct links. Unknown peers must be refused before."""
        edges: list[EdgeCost] = []
        records: list[LinkRecord] = []
        flags: list[Flag] = []
        shared: list[SampleRecord] = []
        for m in measurements:
            a, b = pair(reporter, m.peer_id)
            if not self.allowed(a, b):
                continue
            state = self.links.get((a, b))
            if state is None:
                state = self.links[a, b] = LinkState(a, b)
            reason, far_below = self._implausible(state, reporter, m, now)
            if reason is not None:
                flags.append(Flag(reporter, m.peer_id, reason))
                self.implausible[reporter] = self.implausible.get(reporter, 0) + 1
            before = (state.weight, state.down_since)
            self._take(state, reporter, m, now, far_below)
            if (state.weight, state.down_since) == before:
                if self._contested(state, reporter, now):
                    state.shared[reporter] = now
                    shared.append(SampleRecord(a, b, reporter, state.samples[reporter]))
                continue
            records.append(state.record())
            shared += state.sample_records()
            edges += self._place_edge(a, b, state, before[1] is None)
        return LinkGraphUpdate(edges, records, flags, shared)

    def set_records(
        self, records: Iterable[LinkRecord], samples: Iterable[SampleRecord] = ()
    ) -> list[EdgeCost]:
        """Take link state and samples another replica decided or shared (from the store). A link that
        went down forgets its samples here too (as where it was decided); a sample replaces this one's
        of the same end unless that is newer."""
        edges: list[EdgeCost] = []
        for r in records:
            a, b = pair(r.a, r.b)
            if a == b or a not in self.nodes or b not in self.nodes or not self.allowed(a, b):
                continue
            state = self.links.get((a, b))
            if state is None:
                state = self.links[a, b] = LinkState(a, b)
            if (state.weight, state.down_since) == (r.weight, r.down_since):
                continue
            was_up = state.down_since is None
            if r.down_since is not None and r.down_since != state.down_since:
                state.samples.clear()
            elif r.weight is not None and state.weight is not None and r.weight < state.weight:
                self._restart_smoothing(state)
            state.weight, state.down_since = r.weight, r.down_since
            edges += self._place_edge(a, b, state, was_up)
        self._take_samples(samples)
        return edges

    # --- internals -------------------------------------------------------------------------------

    def _restart_smoothing(self, state: LinkState) -> None:
        """Another replica lowered the weight, restarting both ends' smoothing at their latest reports
        (`_dropped`): the samples held here that are newer than those it sent restart at theirs."""
        p = self.policy
        for end, s in state.samples.items():
            if s.rtt_ms is None or s.smoothed is None:
                continue
            value = s.rtt_ms + p.loss_penalty_ms * (s.loss or 0.0)
            if value < s.smoothed:
                state.samples[end] = replace(s, smoothed=value)

    def _take_samples(self, samples: Iterable[SampleRecord]) -> None:
        for r in samples:
            a, b = pair(r.a, r.b)
            if r.end not in (a, b) or a not in self.nodes or b not in self.nodes or not self.allowed(a, b):
                continue
            state = self.links.get((a, b))
            if state is None:
                state = self.links[a, b] = LinkState(a, b)
            own = state.samples.get(r.end)
            if own is None or r.sample.at >= own.at:
                state.samples[r.end] = r.sample

    def _contested(self, state: LinkState, reporter: int, now: datetime) -> bool:
        """The reporter's sample would lower the weight or bring the link back, but this replica holds
        no fresh sample of the other end to decide with; not shared again within `share_every_s`."""
        p = self.policy
        last = state.shared.get(reporter)
        if last is not None and now - last < timedelta(seconds=p.share_every_s):
            return False
        other = state.samples.get(state.b if reporter == state.a else state.a)
        if other is not None and now - other.at <= timedelta(seconds=p.sample_max_age_s):
            return False
        s = state.samples.get(reporter)
        if s is None:
            return False
        if state.down_since is not None:
            return self._sees_it_working(s, state.down_since)
        w = p.default_weight_ms if state.weight is None else state.weight
        return s.smoothed is not None and s.smoothed < w - max(p.band_abs_ms, p.band_rel * w)

    def _place_edge(self, a: int, b: int, state: LinkState, was_up: bool) -> list[EdgeCost]:
        """The routing change of the a-b edge after its link's state changed: gone while it is down,
        else its cost (none when a link that was down stays down)."""
        if state.down_since is not None:
            return [EdgeCost(a, b, None)] if was_up else []
        return [EdgeCost(a, b, self.cost(a, b))]

    def _is_up(self, a: int, b: int) -> bool:
        state = self.links.get((a, b))
        return state is None or state.down_since is None

    def _reports_down(self, m: LinkMeasurement) -> bool:
        p = self.policy
        lossy = m.loss is not None and m.loss >= p.loss_down
        stale = m.handshake_age_s is not None and m.handshake_age_s > p.handshake_stale_s
        return lossy or stale

    def _take(
        self, state: LinkState, reporter: int, m: LinkMeasurement, now: datetime, far_below: bool = False
    ) -> None:
        p = self.policy
        if state.down_since is None:
            if self._reports_down(m):
                state.down_since = now
                state.samples.clear()
                return
            state.samples[reporter] = self._sample(state.samples.get(reporter), m, now, far_below)
        else:
            t = state.down_since
            state.samples[reporter] = self._sample(state.samples.get(reporter), m, now, far_below)
            if now < t + timedelta(seconds=p.hold_down_s):
                return
            ends = (state.samples.get(state.a), state.samples.get(state.b))
            if not all(s is not None and self._sees_it_working(s, t) for s in ends):
                return
            state.down_since = None
        if m.rtt_ms is not None or state.measured_at is None:
            state.measured_at = now
        elif (
            state.weight is not None
            and state.weight > p.default_weight_ms
            and now - state.measured_at > timedelta(seconds=p.unmeasured_retry_s)
        ):
            state.weight, state.measured_at = None, now  # tried direct again (see the module rules)
            return
        measured = self._measured(state, now)
        if measured is None:
            return
        w = state.weight
        if w is None or abs(measured - w) > max(p.band_abs_ms, p.band_rel * w):
            state.weight = self._dropped(state, w, measured, now)

    def _sample(
        self, before: Sample | None, m: LinkMeasurement, now: datetime, far_below: bool = False
    ) -> Sample:
        """The end's new sample: its report, with the EWMA carried on from its previous fresh one."""
        p = self.policy
        value = None if m.rtt_ms is None else m.rtt_ms + p.loss_penalty_ms * (m.loss or 0.0)
        smoothed = value
        if (
            value is not None
            and before is not None
            and before.smoothed is not None
            and now - before.at <= timedelta(seconds=p.sample_max_age_s)
        ):
            smoothed = before.smoothed + p.smoothing * (value - before.smoothed)
        return Sample(m.rtt_ms, m.loss, m.handshake_age_s, now, smoothed, far_below)

    def _sees_it_working(self, s: Sample, down_since: datetime) -> bool:
        """The end's report, made after the hold-down, says the direct link works again."""
        p = self.policy
        if s.at < down_since + timedelta(seconds=p.hold_down_s):
            return False
        if s.loss is not None and s.loss >= p.loss_down:
            return False
        if s.handshake_age_s is not None and s.handshake_age_s > p.handshake_stale_s:
            return False
        answered = s.rtt_ms is not None and s.loss is not None
        handshake_after_down = (
            s.handshake_age_s is not None
            and s.at - timedelta(seconds=min(s.handshake_age_s, MAX_HANDSHAKE_AGE_S)) > down_since
        )
        return answered or handshake_after_down

    def _dropped(self, state: LinkState, w: float | None, measured: float, now: datetime) -> float:
        """The new weight when the smoothed value left the band: `measured`, except on the way down when
        both ends' latest reports are below the band too: then the worse of those at once, and both
        ends' smoothing restarts there (see the module rules)."""
        p = self.policy
        if w is None or measured >= w:
            return measured
        floor = w - max(p.band_abs_ms, p.band_rel * w)
        latest = {
            end: s.rtt_ms + p.loss_penalty_ms * (s.loss or 0.0)
            for end, s in state.samples.items()
            if s.rtt_ms is not None and now - s.at <= timedelta(seconds=p.sample_max_age_s)
        }
        if len(latest) < 2 or max(latest.values()) >= floor:
            return measured
        for end, value in latest.items():
            state.samples[end] = replace(state.samples[end], smoothed=value)
        return max(latest.values())

    def _measured(self, state: LinkState, now: datetime) -> float | None:
        """The link's value as measured now: the worse of the two ends' smoothed reports; while only
        one end has a fresh one, no lower than the weight the link has (one end can only raise it)."""
        p = self.policy
        fresh = [
            s.smoothed
            for s in state.samples.values()
            if s.smoothed is not None and now - s.at <= timedelta(seconds=p.sample_max_age_s)
        ]
        if not fresh:
            return None
        worst = max(fresh)
        if len(fresh) < 2:
            worst = max(worst, p.default_weight_ms if state.weight is None else state.weight)
        return worst

    def _implausible(
        self, state: LinkState, reporter: int, m: LinkMeasurement, now: datetime
    ) -> tuple[str | None, bool]:
        """Why this report cannot be believed (None: it can), and whether its rtt is far below the other
        end's latest (kept on the sample: the next report of this end is judged with it)."""
        p = self.policy
        if m.rtt_ms is None:
            return None, False
        other = state.samples.get(state.b if reporter == state.a else state.a)
        far_below = (
            other is not None
            and other.rtt_ms is not None
            and now - other.at <= timedelta(seconds=p.sample_max_age_s)
            and m.rtt_ms < p.implausible_ratio * other.rtt_ms
            and other.rtt_ms - m.rtt_ms > p.implausible_gap_ms
        )
        if m.rtt_ms < p.min_rtt_ms:
            return f"rtt {m.rtt_ms:g} ms is below the {p.min_rtt_ms:g} ms any tunnel takes", far_below
        own = state.samples.get(reporter)
        if far_below and other is not None and own is not None and own.far_below and other.at > own.at:
            return f"rtt {m.rtt_ms:g} ms is far below the {other.rtt_ms:g} ms the other end sees", True
        return None, far_below
