"""The mesh model end to end on rendered maps: WireGuard cryptokey routing delivers every packet on
random meshes with random failures, a serial grows exactly when a map's content changes, and a
restart from stored state changes no serial."""

from __future__ import annotations

import itertools
import random
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.mesh import Mesh
from controller.netmap import NodeCards, render_netmap
from controller.routing import cost_tenths
from controller.topology import LinkPolicy
from tests.support import MESH_CIDR, T0, card, deliver, maps, strip_serial
from wire.delta import apply_delta
from wire.models import LinkMeasurement, NetMap, NetMapDelta


def mesh_of(ids: list[int]) -> Mesh:
    return Mesh(MESH_CIDR, LinkPolicy(), 25, [card(n) for n in ids])


@st.composite
def meshes_with_failures(
    draw: st.DrawFn,
) -> tuple[list[int], list[tuple[int, int]], dict[tuple[int, int], float]]:
    ids = sorted(draw(st.sets(st.integers(1, 39), min_size=2, max_size=9)))
    pairs = list(itertools.combinations(ids, 2))
    failed = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=len(pairs)))
    rtts = {p: draw(st.sampled_from([1.0, 5.0, 20.0, 80.0, 200.0])) for p in pairs if p not in failed}
    return ids, failed, rtts


@settings(max_examples=120, deadline=None)
@given(world=meshes_with_failures())
def test_every_packet_is_delivered_by_cryptokey_routing_on_the_rendered_maps(world):
    ids, failed, rtts = world
    mesh = mesh_of(ids)
    for (a, b), rtt in rtts.items():
        mesh.report(a, [LinkMeasurement(peer_id=b, rtt_ms=rtt, loss=0.0, handshake_age_s=5)], T0)
    for a, b in failed:
        mesh.report(b, [LinkMeasurement(peer_id=a, loss=1.0)], T0)
    netmaps = maps(mesh)
    reachable = {n: set() for n in ids}
    for s, d in itertools.permutations(ids, 2):
        if mesh.router.path(s, d) is None:
            continue  # partitioned: nothing can deliver it
        hops = deliver(netmaps, s, d)
        assert all(tuple(sorted(p)) not in failed for p in itertools.pairwise(hops)), (
            f"{hops} uses a failed link"
        )
        assert deliver(netmaps, d, s) == hops[::-1]
        reachable[s].add(d)
    for n, m in netmaps.items():
        # Every allowed IP belongs to one peer only, and routes agree with the allowed IPs.
        claimed = [str(net) for p in m.peers for net in p.allowed_ips]
        assert len(claimed) == len(set(claimed))
        for route in m.routes:
            if route.destination in reachable[n]:
                owner = next(
                    p for p in m.peers if any(route.destination_address in net for net in p.allowed_ips)
                )
                assert owner.node_id == route.via


@settings(max_examples=80, deadline=None)
@given(
    world=meshes_with_failures(),
    joining=st.integers(40, 45),
    unmeasured=st.integers(0, 4),
    # default links dear and hops cheap: measured links relay pairs that have no state of their own
    policy=st.sampled_from([LinkPolicy(), LinkPolicy(default_weight_ms=100.0, hop_penalty_ms=1.0)]),
)
def test_maps_made_from_each_rows_few_odd_destinations_are_the_maps_of_the_whole_rows(
    world, joining, unmeasured, policy
):
    """The mesh reads only the destinations a row does not reach directly at the default cost; its
    maps, and the deltas of a join, are those made from the router's whole rows (some links measured,
    some down, the others default: relayed pairs without a link of their own)."""
    ids, failed, rtts = world
    mesh = Mesh(MESH_CIDR, policy, 25, [card(n) for n in ids])
    for (a, b), rtt in rtts.items():
        if (a * 7 + b) % 5 < unmeasured:
            continue
        for x, y in ((a, b), (b, a)):  # both ends: one end alone can only raise a link's weight
            mesh.report(x, [LinkMeasurement(peer_id=y, rtt_ms=rtt, loss=0.0, handshake_age_s=5)], T0)
    for a, b in failed:
        mesh.report(b, [LinkMeasurement(peer_id=a, loss=1.0)], T0)
    before = maps(mesh)
    serials = {n: mesh.serial(n) for n in mesh.cards}
    mesh.version = max(serials.values()) + 1
    mesh.upsert(card(joining))
    router = mesh.router
    directory = NodeCards([mesh.cards[n] for n in router.nodes], MESH_CIDR, 25)
    for n in mesh.cards:
        whole = render_netmap(
            directory,
            router.index[n],
            mesh.serial(n),
            router.next_hop_row(n),
            cost_tenths(router.cost_row(n)),
            router.forwards(n),
        )
        assert mesh.render(n) == whole
        if n in before:
            delta = NetMapDelta.model_validate_json(mesh.render_update(n, serials[n]))
            assert apply_delta(before[n], delta) == NetMap.model_validate_json(whole)


@settings(max_examples=60, deadline=None)
@given(
    ids=st.sets(st.integers(1, 39), min_size=2, max_size=7).map(sorted),
    reports=st.lists(
        st.tuples(
            st.integers(0, 6),
            st.integers(0, 6),
            st.sampled_from([None, 1.0, 4.0, 30.0, 150.0]),
            st.sampled_from([None, 0.0, 0.6, 1.0]),
            st.sampled_from([None, 2.0, 500.0]),
        ),
        max_size=25,
    ),
)
def test_a_serial_grows_exactly_when_the_map_content_changes(ids, reports):
    mesh = mesh_of(ids)
    before = maps(mesh)
    t = T0
    for i, j, rtt, loss, hs in reports:
        a, b = ids[i % len(ids)], ids[j % len(ids)]
        if a == b:
            continue
        t += timedelta(seconds=30)
        change = mesh.report(a, [LinkMeasurement(peer_id=b, rtt_ms=rtt, loss=loss, handshake_age_s=hs)], t)
        after = maps(mesh)
        for n in ids:
            same = strip_serial(before[n]) == strip_serial(after[n])
            assert (after[n].serial == before[n].serial) == same, f"node {n}: serial vs content disagree"
            assert (n in change.maps) == (not same)
            if not same:
                assert after[n].serial == before[n].serial + 1
        before = after


def test_adding_and_removing_nodes_changes_every_map_and_keeps_ids_in_order():
    mesh = mesh_of([1, 2, 3])
    change = mesh.upsert(card(4))
    assert set(change.maps) == {1, 2, 3, 4} and change.maps[4].serial == 1
    assert mesh.upsert(card(4)).maps == {}  # the same card again: nothing changed
    change = mesh.remove(2)
    assert set(change.maps) == {1, 3, 4}
    assert [p.node_id for p in maps(mesh)[1].peers] == [3, 4]


def test_a_restart_from_stored_state_changes_no_serial():
    mesh = mesh_of([1, 2, 3, 4])
    mesh.report(1, [LinkMeasurement(peer_id=2, loss=1.0)], T0)
    mesh.report(3, [LinkMeasurement(peer_id=4, rtt_ms=3.0, loss=0.0, handshake_age_s=1)], T0)
    links = [s.record() for s in mesh.topology.links.values()]
    stored = {n: mesh.map_state(n) for n in mesh.cards}
    again = Mesh(MESH_CIDR, LinkPolicy(), 25, [card(n) for n in [1, 2, 3, 4]], links, stored)
    assert again.initial.maps == {}
    assert {n: again.render(n) for n in again.cards} == {n: mesh.render(n) for n in mesh.cards}
    # Other settings make other maps: those serials grow.
    other = Mesh(MESH_CIDR, LinkPolicy(), None, [card(n) for n in [1, 2, 3, 4]], links, stored)
    assert {n: s.serial for n, s in other.initial.maps.items()} == {
        n: s.serial + 1 for n, s in stored.items()
    }


def test_an_unreachable_peer_keeps_its_own_address_and_has_no_cost():
    mesh = mesh_of([1, 2])
    mesh.report(1, [LinkMeasurement(peer_id=2, loss=1.0)], T0)
    m = maps(mesh)[1]
    assert [str(n) for n in m.peers[0].allowed_ips] == [f"{MESH_CIDR[2]}/32"]
    assert m.routes[0].via == 2 and m.routes[0].cost is None


def idle_rounds(mesh: Mesh, rounds: int, seed: int = 7) -> int:
    """Run `rounds` report rounds of an idle mesh whose links only have RTT noise (up to 60% spikes)
    and whose 1-2 link is cut; how many new map serials they made after the first few rounds."""
    rng = random.Random(seed)
    ids = sorted(mesh.cards)
    base = {p: 2.0 + 3.0 * (i % 4) for i, p in enumerate(itertools.combinations(ids, 2))}
    new_serials = 0
    for r in range(rounds):
        t = T0 + timedelta(seconds=10 * r)
        for a in ids:
            out = []
            for b in ids:
                if b == a:
                    continue
                if {a, b} == {1, 2}:
                    out.append(LinkMeasurement(peer_id=b, loss=1.0, handshake_age_s=400))
                    continue
                rtt = base[min(a, b), max(a, b)] * (1 + rng.choice([0.0, 0.1, -0.1, 0.3, 0.6, -0.4]))
                out.append(LinkMeasurement(peer_id=b, rtt_ms=rtt, loss=0.0, handshake_age_s=5))
            change = mesh.report(a, out, t)
            if r >= 5:
                new_serials += len(change.maps)
    return new_serials


def test_an_idle_mesh_with_rtt_noise_gets_no_new_map():
    """RTT noise moves route costs, never next hops here: no map changes (and the cut pair stays on
    one relay), however many rounds of reports come in."""
    mesh = mesh_of([1, 2, 3, 4, 5, 6])
    assert idle_rounds(mesh, 200) == 0
    assert mesh.router.path(1, 2) is not None and len(mesh.router.path(1, 2)) == 3


def test_a_route_whose_next_hop_changes_still_changes_the_map():
    mesh = mesh_of([1, 2, 3])
    before = mesh.serial(1)
    change = mesh.report(1, [LinkMeasurement(peer_id=2, loss=1.0)], T0)
    assert 1 in change.maps and mesh.serial(1) > before
    assert [r.via for r in maps(mesh)[1].routes if r.destination == 2] == [3]


def test_a_relayed_pair_goes_back_to_direct_when_its_direct_probes_heal_and_does_not_flap():
    """Issue 8.6: the agents keep probing a relayed pair's direct path (agent.links); when it heals the
    pair goes back to direct within a few report rounds, once, and noise does not move it again."""
    mesh = mesh_of([1, 2, 3])
    rng = random.Random(3)
    vias: list[int | None] = []

    def round_(t: int, rtt_12: float) -> None:
        for a, b, rtt in ((1, 2, rtt_12), (1, 3, 2.0), (2, 3, 2.0)):
            for x, y in ((a, b), (b, a)):
                noisy = rtt * (1 + rng.uniform(-0.3, 0.3))
                m = LinkMeasurement(peer_id=y, rtt_ms=noisy, loss=0.0, handshake_age_s=5)
                mesh.report(x, [m], T0 + timedelta(seconds=10 * t))
        vias.append(mesh.router.next_hop(1, 2))

    for t in range(10):
        round_(t, 80.0)  # `lab delay h1 h2 80ms`
    assert vias[-1] == 3
    for t in range(10, 40):
        round_(t, 1.0)  # healed
    back = vias.index(2, 10) - 10
    assert back <= 4, f"back to direct after {back} rounds"
    assert all(v == 3 for v in vias[1:10]) and all(v == 2 for v in vias[10 + back :]), vias
