"""Link state from measurements: new links up at the default weight, down when either end says so,
back only on a handshake newer than the failure, and edge weights that ignore noise (hysteresis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.topology import LinkGraph, LinkPolicy, LinkRecord
from wire.models import LinkMeasurement as M

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = LinkPolicy()


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def healthy(peer: int, rtt: float = 5.0) -> M:
    return M(peer_id=peer, rtt_ms=rtt, loss=0.0, handshake_age_s=10)


def test_a_new_link_is_up_with_the_default_weight_and_a_symmetric_cost():
    topo = LinkGraph(POLICY, [1, 2, 3])
    assert topo.up_links() == 3 and topo.edges() == []  # fresh links are default links: nothing stored
    assert topo.weight(1, 2) == POLICY.default_weight_ms
    assert POLICY.cost(1, 2, None) == POLICY.cost(2, 1, None)
    assert POLICY.cost(1, 2, None) != POLICY.cost(1, 3, None)  # the perturbation tells edges apart
    assert topo.add_node(4) == [] and topo.up_links() == 6 and topo.is_up(1, 4)
    assert topo.cost(1, 4) == POLICY.cost(1, 4, None)


def test_either_end_takes_a_link_down_by_loss_or_an_old_handshake():
    topo = LinkGraph(POLICY, [1, 2, 3])
    update = topo.report(1, [M(peer_id=2, loss=POLICY.loss_down)], at(0))
    assert [(e.a, e.b, e.cost) for e in update.edges] == [(1, 2, None)]
    assert update.records == [LinkRecord(1, 2, None, at(0))]
    assert not topo.is_up(1, 2)
    update = topo.report(3, [M(peer_id=2, handshake_age_s=POLICY.handshake_stale_s + 1)], at(0))
    assert not topo.is_up(2, 3)
    # Below the thresholds nothing goes down.
    topo.report(
        1, [M(peer_id=3, loss=POLICY.loss_down - 0.01, handshake_age_s=POLICY.handshake_stale_s)], at(0)
    )
    assert topo.is_up(1, 3)


def test_a_down_link_returns_only_when_both_ends_see_a_handshake_newer_than_the_failure():
    topo = LinkGraph(POLICY, [1, 2])
    topo.report(1, [M(peer_id=2, loss=1.0, handshake_age_s=100)], at(0))
    # Relayed: no probe of the direct link; the handshake is from before the failure.
    assert topo.report(2, [M(peer_id=1, handshake_age_s=150)], at(50)).edges == []
    # A handshake after the failure, but still inside the hold-down: not yet.
    assert topo.report(2, [M(peer_id=1, handshake_age_s=1)], at(POLICY.hold_down_s / 2)).edges == []
    assert topo.report(1, [M(peer_id=2, handshake_age_s=1)], at(POLICY.hold_down_s / 2)).edges == []
    # A handshake exactly at the failure is not newer than it.
    assert topo.report(2, [M(peer_id=1, handshake_age_s=60)], at(60)).edges == []
    # One end alone cannot bring it back (that would lower its weight).
    assert topo.report(2, [M(peer_id=1, handshake_age_s=59)], at(60)).edges == []
    update = topo.report(1, [M(peer_id=2, handshake_age_s=58)], at(61))
    assert [(e.a, e.b) for e in update.edges] == [(1, 2)] and update.edges[0].cost is not None
    assert topo.is_up(1, 2) and topo.link(1, 2).down_since is None


def test_a_down_link_returns_when_both_ends_probe_it_working_over_the_direct_path():
    """Partial loss takes a link down without ending its WireGuard session: no new handshake comes,
    but probes over the direct path (agent.links keeps probing relayed peers) show it healthy."""
    topo = LinkGraph(POLICY, [1, 2])
    topo.report(1, [M(peer_id=2, rtt_ms=5.0, loss=0.6, handshake_age_s=30)], at(0))
    assert not topo.is_up(1, 2)
    assert topo.report(1, [M(peer_id=2, rtt_ms=5.0, loss=0.0, handshake_age_s=60)], at(30)).edges == []
    update = topo.report(2, [M(peer_id=1, rtt_ms=5.0, loss=0.0, handshake_age_s=60)], at(31))
    assert [(e.a, e.b) for e in update.edges] == [(1, 2)]
    # Still lossy at one end: it stays down.
    topo.report(1, [M(peer_id=2, rtt_ms=5.0, loss=0.6, handshake_age_s=30)], at(40))
    topo.report(1, [M(peer_id=2, rtt_ms=5.0, loss=0.0, handshake_age_s=60)], at(60))
    assert topo.report(2, [M(peer_id=1, rtt_ms=5.0, loss=0.5, handshake_age_s=60)], at(61)).edges == []
    assert not topo.is_up(1, 2)


def test_one_end_alone_can_raise_a_weight_but_never_lower_it():
    """A node that says rtt 0 to its peers must not draw their traffic through itself."""
    topo = LinkGraph(POLICY, [1, 2, 3])
    # Node 3 lies about both of its links; nobody else has reported them yet.
    update = topo.report(3, [healthy(1, rtt=0.0), healthy(2, rtt=0.0)], at(0))
    assert topo.weight(1, 3) == POLICY.default_weight_ms
    assert topo.weight(2, 3) == POLICY.default_weight_ms
    assert {e.cost for e in update.edges} <= {POLICY.cost(1, 3, None), POLICY.cost(2, 3, None)}
    # The honest ends see 40 ms: the worse of the two ends wins, however often the liar repeats.
    topo.report(1, [healthy(3, rtt=40.0)], at(1))
    topo.report(2, [healthy(3, rtt=40.0)], at(1))
    for t in range(2, 12):
        topo.report(3, [healthy(1, rtt=0.0), healthy(2, rtt=0.0)], at(t))
    assert topo.weight(1, 3) == 40.0 and topo.weight(2, 3) == 40.0
    # One end alone raises a weight at once (a slow link must be avoidable)...
    topo.report(1, [healthy(2, rtt=300.0)], at(12))
    assert topo.weight(1, 2) == 300.0
    # ...and it goes down again only when both ends see it better.
    topo.report(1, [healthy(2, rtt=5.0)], at(13))
    assert topo.weight(1, 2) > 100.0
    topo.report(2, [healthy(1, rtt=5.0)], at(14))
    topo.report(1, [healthy(2, rtt=5.0)], at(15))
    topo.report(2, [healthy(1, rtt=5.0)], at(16))
    topo.report(1, [healthy(2, rtt=5.0)], at(17))
    assert topo.weight(1, 2) < 100.0


def test_a_report_older_than_the_sample_age_no_longer_lets_the_other_end_lower_a_weight():
    topo = LinkGraph(POLICY, [1, 2])
    topo.report(1, [healthy(2, rtt=50.0)], at(0))
    topo.report(2, [healthy(1, rtt=50.0)], at(0))
    assert topo.weight(1, 2) == 50.0
    late = POLICY.sample_max_age_s + 1
    for t in range(5):
        topo.report(1, [healthy(2, rtt=1.0)], at(late + t))  # end 2 went quiet: 1 alone
    assert topo.weight(1, 2) == 50.0


def test_implausible_reports_are_flagged_and_counted_per_reporter():
    topo = LinkGraph(POLICY, [1, 2, 3])
    topo.report(1, [healthy(3, rtt=40.0)], at(0))
    update = topo.report(3, [healthy(1, rtt=0.0), healthy(2, rtt=0.0)], at(1))
    assert [(f.reporter, f.peer) for f in update.flags] == [(3, 1), (3, 2)]
    assert "below" in update.flags[0].reason
    update = topo.report(3, [healthy(1, rtt=2.0)], at(2))  # not zero, but far below what 1 saw
    assert update.flags == []  # ...before 3's last claim: the link may have just healed
    topo.report(1, [healthy(3, rtt=40.0)], at(2.5))  # 1 measures again, and still sees 40
    update = topo.report(3, [healthy(1, rtt=2.0)], at(3))
    assert [(f.reporter, f.peer) for f in update.flags] == [(3, 1)]
    assert "other end" in update.flags[0].reason
    # Honest noise is not flagged.
    assert topo.report(1, [healthy(3, rtt=30.0)], at(4)).flags == []
    assert topo.implausible == {3: 3}
    topo.remove_node(3)
    assert topo.implausible == {}


def test_a_link_that_heals_is_not_an_implausible_report():
    """`lab heal` after `lab delay 80ms`: the first end to report sees 1 ms while the other end's latest
    report still says 80. One end is a round ahead, not lying: nothing is flagged, and the weight
    comes down once both ends say so."""
    topo = LinkGraph(POLICY, [1, 2])
    for t in range(4):
        topo.report(1, [healthy(2, rtt=80.0)], at(2 * t))
        topo.report(2, [healthy(1, rtt=80.0)], at(2 * t + 1))
    flags = []
    for t in range(4, 8):
        flags += topo.report(1, [healthy(2, rtt=1.0)], at(2 * t)).flags
        flags += topo.report(2, [healthy(1, rtt=1.0)], at(2 * t + 1)).flags
    assert flags == [] and topo.implausible == {}
    assert topo.weight(1, 2) < 10


def test_a_raised_link_nobody_can_measure_any_more_is_tried_direct_again():
    """Issue 8.6 in a mixed mesh: an end without probe addresses (IPv6 off, an older agent) answers no
    probe of the direct path, so while the pair is relayed neither end reports an rtt for it, only
    fresh handshakes. The raised weight would stand for good; after `unmeasured_retry_s` the link goes
    back to the default weight (tried direct, where both ends probe it on the tunnel address)."""
    topo = LinkGraph(POLICY, [1, 2])
    for t in range(4):
        topo.report(1, [healthy(2, rtt=80.0)], at(t))
        topo.report(2, [healthy(1, rtt=80.0)], at(t))
    assert topo.weight(1, 2) > 70
    unmeasured = [M(peer_id=2, handshake_age_s=20)], [M(peer_id=1, handshake_age_s=20)]
    t = 4.0
    while t < 4 + POLICY.unmeasured_retry_s - 10:
        assert topo.report(1, unmeasured[0], at(t)).edges == []
        assert topo.report(2, unmeasured[1], at(t)).edges == []
        t += 10
    updates = []
    while t < 4 + POLICY.unmeasured_retry_s + 20:
        updates += topo.report(1, unmeasured[0], at(t)).edges + topo.report(2, unmeasured[1], at(t)).edges
        t += 10
    assert [(e.a, e.b) for e in updates] == [(1, 2)]
    assert topo.weight(1, 2) == POLICY.default_weight_ms
    # a link still measured (slow, both ends agree) is never reset
    topo = LinkGraph(POLICY, [1, 2])
    for t in range(0, 2 * int(POLICY.unmeasured_retry_s), 10):
        topo.report(1, [healthy(2, rtt=80.0)], at(t))
        topo.report(2, [M(peer_id=1, handshake_age_s=20)], at(t))
    assert topo.weight(1, 2) > 70


def test_a_healed_link_comes_down_in_one_step_once_both_ends_see_it():
    """Stepping down 80 -> 40 -> 20 would pass where the direct cost equals a relay's (two 1 ms hops:
    42), where one noisy round flips the route back; both ends' reports below the band drop it at once."""
    topo = LinkGraph(POLICY, [1, 2])
    for t in range(4):
        topo.report(1, [healthy(2, rtt=80.0)], at(2 * t))
        topo.report(2, [healthy(1, rtt=80.0)], at(2 * t + 1))
    topo.report(1, [healthy(2, rtt=1.0)], at(10))
    assert (topo.weight(1, 2) or 0) > 70  # one end alone never lowers it
    topo.report(2, [healthy(1, rtt=1.5)], at(11))
    assert topo.weight(1, 2) == 1.5
    topo.report(1, [healthy(2, rtt=12.0)], at(12))  # a noisy round: the smoothing restarted at 1 and 1.5
    assert topo.weight(1, 2) == 6.5


def test_two_replicas_sharing_contested_samples_decide_like_one_graph():
    """Ends 1 and 2 report to different replicas (two graphs): what one shares, the other takes; a
    contested end is shared once per `share_every_s`, an end whose peer's sample is at hand never."""
    here, there = LinkGraph(POLICY, [1, 2]), LinkGraph(POLICY, [1, 2])

    def carry(update, to):  # the store carrying a change to the other replica
        to.set_records(update.records, update.samples)

    for t in range(4):
        carry(here.report(1, [healthy(2, rtt=80.0)], at(2 * t)), there)
        carry(there.report(2, [healthy(1, rtt=80.0)], at(2 * t + 1)), here)
    assert here.weight(1, 2) == there.weight(1, 2) == 80.0
    healed = here.report(1, [healthy(2, rtt=1.0)], at(10))
    assert [s.end for s in healed.samples] == [1] and not healed.records  # contested: shared, not decided
    assert (here.weight(1, 2) or 0) > 70
    again = here.report(1, [healthy(2, rtt=1.0)], at(11))
    assert again.samples == []  # shared a moment ago
    carry(healed, there)
    decided = there.report(2, [healthy(1, rtt=1.5)], at(12))
    assert there.weight(1, 2) == 1.5 and {s.end for s in decided.samples} == {1, 2}
    carry(decided, here)
    assert here.weight(1, 2) == 1.5
    noisy = here.report(1, [healthy(2, rtt=1.2)], at(13))  # the smoothing restarted here too
    assert noisy.records == [] and noisy.samples == [] and here.weight(1, 2) == 1.5


def test_a_fresh_handshake_with_heavy_loss_does_not_bring_a_link_back():
    topo = LinkGraph(POLICY, [1, 2])
    topo.report(1, [M(peer_id=2, loss=1.0)], at(0))
    assert topo.report(1, [M(peer_id=2, loss=0.9, handshake_age_s=1)], at(60)).edges == []


def test_a_measured_link_moves_off_the_default_and_then_only_on_big_changes():
    topo = LinkGraph(POLICY, [1, 2])
    update = topo.report(1, [healthy(2, rtt=50.0)], at(0))
    assert topo.weight(1, 2) == 50.0 and len(update.edges) == 1
    assert topo.report(2, [healthy(1, rtt=55.0)], at(1)).edges == []  # the worse, 55: inside the band
    update = topo.report(2, [healthy(1, rtt=105.0)], at(2))  # smoothed 80: outside
    assert topo.weight(1, 2) == 80.0 and len(update.edges) == 1


def test_loss_makes_a_link_more_expensive():
    topo = LinkGraph(POLICY, [1, 2])
    topo.report(1, [M(peer_id=2, rtt_ms=10.0, loss=0.2, handshake_age_s=1)], at(0))
    assert topo.weight(1, 2) == 10.0 + 0.2 * POLICY.loss_penalty_ms


@settings(max_examples=200, deadline=None)
@given(
    base=st.floats(1.0, 500.0),
    noise=st.lists(st.tuples(st.sampled_from([1, 2]), st.floats(-1.0, 1.0)), min_size=1, max_size=40),
)
def test_noise_inside_the_band_never_moves_an_edge(base, noise):
    topo = LinkGraph(POLICY, [1, 2])
    topo.report(1, [healthy(2, rtt=base)], at(0))
    topo.report(2, [healthy(1, rtt=base)], at(0))
    cost = topo.cost(1, 2)
    half_band = max(POLICY.band_abs_ms, POLICY.band_rel * base) / 2
    for i, (reporter, jitter) in enumerate(noise):
        update = topo.report(reporter, [healthy(3 - reporter, rtt=base + jitter * half_band)], at(i + 1))
        assert update.edges == [] and update.records == []
    assert topo.cost(1, 2) == cost


def test_restored_records_rebuild_the_same_graph():
    topo = LinkGraph(POLICY, [1, 2, 3])
    topo.report(1, [healthy(2, rtt=40.0), M(peer_id=3, loss=1.0)], at(0))
    records = [s.record() for s in topo.links.values()]
    again = LinkGraph(POLICY, [1, 2, 3], records)
    assert sorted(again.edges(), key=lambda e: (e.a, e.b)) == sorted(topo.edges(), key=lambda e: (e.a, e.b))
    assert again.link(1, 3).down_since == at(0)


def test_removing_a_node_forgets_its_links():
    topo = LinkGraph(POLICY, [1, 2, 3])
    topo.report(1, [healthy(2)], at(0))
    topo.remove_node(2)
    assert topo.link(1, 2) is None and topo.nodes == {1, 3}


def test_policy_problems_are_named():
    assert LinkPolicy().problems() == []
    assert LinkPolicy(hop_penalty_ms=0).problems() == ["hop_penalty_ms must be > 0"]
    assert LinkPolicy(loss_down=1.5).problems() == ["loss_down must be in (0, 1]"]
