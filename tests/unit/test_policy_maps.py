"""Maps under a policy, property-tested on random meshes, tags, rules, relay rights and link failures:
no map holds a forbidden peer or a route through a node that may not relay, every allowed pair is
still delivered hop by hop, and a serial grows only for the maps a policy change really touches."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.mesh import Mesh
from controller.netmap import NodeCard
from controller.topology import LinkPolicy
from tests.support import MESH_CIDR, T0, card, deliver, maps, strip_serial
from wire.models import LinkMeasurement, NetMap
from wire.policy import PolicyDocument, Subject, decide, may_relay, parse_policy

TAGS = ["a", "b", "c"]
SELECTORS = ["*", "tag:a", "tag:b", "tag:c"]


def tagged(n: int, tags: list[str]) -> NodeCard:
    return dataclasses.replace(card(n), tags=tuple(sorted(tags)))


def documents() -> st.SearchStrategy[PolicyDocument]:
    rule = st.fixed_dictionaries(
        {
            "from": st.lists(st.sampled_from(SELECTORS), min_size=1, max_size=2),
            "to": st.lists(st.sampled_from(SELECTORS), min_size=1, max_size=2),
            "ports": st.sampled_from([None, ["tcp/8000"], ["udp/53", "icmp"]]),
        }
    )
    return st.builds(
        lambda rules, relays: PolicyDocument.model_validate(
            {"rules": [{k: v for k, v in r.items() if v is not None} for r in rules], "relays": relays}
        ),
        st.lists(rule, max_size=4),
        st.lists(st.sampled_from(SELECTORS[1:]), max_size=2),
    )


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[NodeCard], PolicyDocument, list[tuple[int, int]]]:
    ids = sorted(draw(st.sets(st.integers(1, 39), min_size=2, max_size=8)))
    cards = [tagged(n, draw(st.lists(st.sampled_from(TAGS), unique=True, max_size=2))) for n in ids]
    doc = draw(documents())
    pairs = list(itertools.combinations(ids, 2))
    failed = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=len(pairs)))
    return cards, doc, failed


def subject(c: NodeCard) -> Subject:
    return Subject(c.name, frozenset(c.tags))


def connected(doc: PolicyDocument, a: NodeCard, b: NodeCard) -> bool:
    return decide(doc, subject(a), subject(b)).allowed or decide(doc, subject(b), subject(a)).allowed


def check_maps(netmaps: dict[int, NetMap], doc: PolicyDocument, by_id: dict[int, NodeCard]) -> None:
    """No map holds a forbidden peer, a route through a node that may not relay, or a forwarding flag on
    a node that may not relay; every pair the policy connects is delivered, only through relays."""
    relays = {n for n, c in by_id.items() if may_relay(doc, subject(c))}
    for n, m in netmaps.items():
        assert m.policy is not None
        if m.forward:
            assert n in relays, f"{n} forwards but may not relay"
        carried = {
            p.node_id
            for p in m.peers
            if any(net.network_address != p.tunnel_address for net in p.allowed_ips)
        }
        assert carried <= relays, f"{n} routes through {carried - relays}, not all may relay"
        for p in m.peers:
            if not connected(doc, by_id[n], by_id[p.node_id]):
                # a peer the policy does not connect is there only for a relay: it carries our traffic
                # (a relay), or we relay for it
                assert p.node_id in relays or m.forward, f"{n} holds forbidden peer {p.node_id}"
        for r in m.routes:
            if r.via != r.destination:
                assert r.via in relays
            if not connected(doc, by_id[n], by_id[r.destination]):
                assert m.forward or r.destination in relays, f"{n} routes to forbidden {r.destination}"
        claimed = [str(net) for p in m.peers for net in p.allowed_ips]
        assert len(claimed) == len(set(claimed))
    for s, d in itertools.permutations(by_id, 2):
        if connected(doc, by_id[s], by_id[d]):
            hops = deliver(netmaps, s, d)
            assert set(hops[1:-1]) <= relays, f"{s}->{d} crosses {hops} through a node that may not relay"


@settings(max_examples=150, deadline=None)
@given(world=worlds())
def test_no_map_holds_a_forbidden_peer_or_relay(world):
    cards, doc, failed = world
    mesh = Mesh(MESH_CIDR, LinkPolicy(), 25, cards, access=(doc, 1))
    for a, b in failed:
        mesh.report(b, [LinkMeasurement(peer_id=a, loss=1.0)], T0)
    netmaps = maps(mesh)
    assert all(m.policy is not None and m.policy.version == 1 for m in netmaps.values())
    check_maps(netmaps, doc, {c.node_id: c for c in cards})


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[NodeCard], PolicyDocument, list[tuple[str, object]]]:
    cards, doc, _failed = draw(worlds())
    ids = [c.node_id for c in cards]
    pairs = list(itertools.permutations(ids, 2))
    step = st.one_of(
        st.tuples(st.just("policy"), documents()),
        st.tuples(st.just("clear"), st.none()),
        st.tuples(
            st.just("retag"),
            st.tuples(st.sampled_from(ids), st.lists(st.sampled_from(TAGS), unique=True, max_size=2)),
        ),
        st.tuples(st.just("cut"), st.sampled_from(pairs)),  # one end reports the link lost
        st.tuples(st.just("heal"), st.sampled_from(pairs)),  # one end reports it fine
    )
    return cards, doc, draw(st.lists(step, min_size=1, max_size=10))


@settings(max_examples=80, deadline=None)
@given(history=histories())
def test_no_map_ever_holds_a_forbidden_peer_and_only_changed_maps_get_a_serial(history):
    """Through any sequence of policy changes, clears, retags and link cuts and heals: after each step
    the maps obey the policy then in force (none: the full mesh), and a node gets a new serial exactly
    when its map's content changed (only affected agents get a new map)."""
    cards, doc, steps = history
    by_id = {c.node_id: c for c in cards}
    current: PolicyDocument | None = doc
    mesh = Mesh(MESH_CIDR, LinkPolicy(), 25, cards, access=(doc, 1))
    before = maps(mesh)
    t = T0
    for version, (kind, arg) in enumerate(steps, 2):
        t += timedelta(seconds=30)
        mesh.version = version
        if kind == "policy":
            current = arg  # type: ignore[assignment]
            change = mesh.set_policy((current, version), [])  # type: ignore[arg-type]
        elif kind == "clear":
            current = None
            change = mesh.set_policy(None, [])
        elif kind == "retag":
            node, tags = arg  # type: ignore[misc]
            by_id[node] = tagged(node, tags)
            change = mesh.upsert(by_id[node])
        else:
            a, b = arg  # type: ignore[misc]
            healthy = {"rtt_ms": 1.0, "loss": 0.0, "handshake_age_s": 1.0}
            m = {"loss": 1.0} if kind == "cut" else healthy
            change = mesh.report(a, [LinkMeasurement(peer_id=b, **m)], t)
        after = maps(mesh)
        if current is None:
            for n, netmap in after.items():
                assert netmap.policy is None and len(netmap.peers) == len(by_id) - 1, f"{kind}: {n}"
        else:
            check_maps(after, current, by_id)
        for n in by_id:
            same = strip_serial(before[n]) == strip_serial(after[n])
            assert (after[n].serial == before[n].serial) == same, f"{kind}: node {n}: serial vs content"
            assert (n in change.maps) == (not same), f"{kind}: node {n} woken for nothing, or not woken"
        before = after


def test_no_policy_maps_are_todays_maps():
    cards = [card(n) for n in (1, 2, 3)]
    plain = Mesh(MESH_CIDR, LinkPolicy(), 25, cards)
    assert all(m.policy is None and len(m.peers) == 2 for m in maps(plain).values())


def test_a_policy_change_touches_only_the_maps_it_changes():
    cards = [tagged(1, ["supervisor"]), tagged(2, ["worker"]), tagged(3, ["worker"]), tagged(4, ["client"])]
    v1 = parse_policy('[[rules]]\nfrom = ["tag:worker", "tag:client"]\nto = ["tag:supervisor"]\n')
    mesh = Mesh(MESH_CIDR, LinkPolicy(), 25, cards, access=(v1, 1))
    before = maps(mesh)
    assert [p.node_id for p in before[1].peers] == [2, 3, 4]
    assert [p.node_id for p in before[4].peers] == [1]
    assert before[2].policy is not None and before[2].policy.outbound[0].rule == "rules[0]"
    # the client may also reach worker 3's port 9000: the maps of 3 and 4 change, and no other
    v2 = parse_policy(
        '[[rules]]\nfrom = ["tag:worker", "tag:client"]\nto = ["tag:supervisor"]\n'
        '[[rules]]\nname = "c-w3"\nfrom = ["tag:client"]\nto = ["node:node-3"]\nports = ["tcp/9000"]\n'
    )
    change = mesh.set_policy((v2, 2), [])
    assert set(change.maps) == {3, 4}
    after: dict[int, NetMap] = maps(mesh)
    assert [p.node_id for p in after[4].peers] == [1, 3]
    assert [r.rule for r in after[3].policy.inbound] == ["c-w3"]
    assert after[3].policy.version == 2 and after[1].policy.version == 1
    assert after[1] == before[1] and after[2] == before[2]
    # a tag change: node 2 becomes a client and may reach node 3 too; the maps showing node 2 change
    change = mesh.set_policy((v2, 3), [tagged(2, ["client"])])
    assert set(change.maps) == {1, 2, 3}
    assert [p.node_id for p in maps(mesh)[2].peers] == [1, 3]


def test_only_a_node_that_may_relay_carries_others_traffic():
    cards = [tagged(1, ["relay"]), tagged(2, ["worker"]), tagged(3, ["worker"]), tagged(4, ["worker"])]
    doc = parse_policy('relays = ["tag:relay"]\n[[rules]]\nfrom = ["tag:worker"]\nto = ["tag:worker"]\n')
    mesh = Mesh(MESH_CIDR, LinkPolicy(), 25, cards, access=(doc, 1))
    assert [p.node_id for p in maps(mesh)[1].peers] == []  # connected to nobody, relays for nobody yet
    mesh.report(2, [LinkMeasurement(peer_id=3, loss=1.0)], T0)
    netmaps = maps(mesh)
    # 4 is as close as 1, but may not relay: routing goes through 1, and shows the path's own cost
    assert deliver(netmaps, 2, 3) == [2, 1, 3]
    route = next(r for r in netmaps[2].routes if r.destination == 3)
    assert route.via == 1 and route.cost is not None and 59 < route.cost < 61
    direct = next(r for r in netmaps[2].routes if r.destination == 4)
    assert direct.cost is not None and 29 < direct.cost < 31
    assert netmaps[1].forward and [p.node_id for p in netmaps[1].peers] == [2, 3]
    assert [r.destination for r in netmaps[1].routes] == [2, 3]
    # nobody may relay: the pair keeps trying its direct link, and no map forwards
    none = parse_policy('[[rules]]\nfrom = ["tag:worker"]\nto = ["tag:worker"]\n')
    mesh.set_policy((none, 2), [])
    netmaps = maps(mesh)
    assert deliver(netmaps, 2, 3) == [2, 3]
    assert not any(m.forward for m in netmaps.values())


def test_a_pair_goes_through_the_relay_the_policy_allows_however_cheap_the_other_one_looks():
    """Node 4 may not relay; node 3 may. The 1-2 link is down and 3's links are very slow: the maps
    and the topology's routes still go through 3, never through 4 (and not 'direct' over the cut)."""
    cards = [tagged(1, []), tagged(2, []), tagged(3, ["a"]), tagged(4, [])]
    doc = PolicyDocument.model_validate({"rules": [{"from": ["*"], "to": ["*"]}], "relays": ["tag:a"]})
    mesh = Mesh(MESH_CIDR, LinkPolicy(), 25, cards, access=(doc, 1))
    m = LinkMeasurement
    mesh.report(1, [m(peer_id=2, loss=1.0)], T0)
    for a, b, rtt in [(1, 3, 9000.0), (2, 3, 9000.0), (1, 4, 1.0), (2, 4, 1.0)]:
        for reporter, peer in ((a, b), (b, a)):
            mesh.report(reporter, [m(peer_id=peer, rtt_ms=rtt, loss=0.0, handshake_age_s=1)], T0)
    netmaps = maps(mesh)
    assert deliver(netmaps, 1, 2) == [1, 3, 2]
    assert not netmaps[4].forward and netmaps[3].forward
    assert {r.destination: r.via for r in mesh.routes_of(1)}[2] == 3
    assert mesh.forwards(3) and not mesh.forwards(4)
