"""Routing on random graphs with random failures (hypothesis): shortest paths, symmetric and hop-by-hop
consistent next hops, and incremental updates that end exactly where a full recompute does."""

from __future__ import annotations

import itertools
import math

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.routing import DefaultLinks, EdgeCost, Router, pair_jitter
from controller.topology import LinkPolicy

POLICY = LinkPolicy()
# Few distinct weights: plenty of exact ties, which only the perturbation breaks.
WEIGHTS = st.sampled_from([0.5, 1.0, 2.0, 5.0, 10.0, 40.0])


@st.composite
def graphs(draw: st.DrawFn, max_nodes: int = 12) -> tuple[list[int], dict[tuple[int, int], float]]:
    ids = sorted(draw(st.sets(st.integers(1, 500), min_size=2, max_size=max_nodes)))
    pairs = list(itertools.combinations(ids, 2))
    chosen = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=len(pairs))) if pairs else []
    return ids, {p: draw(WEIGHTS) for p in chosen}


def costs(weights: dict[tuple[int, int], float]) -> list[EdgeCost]:
    return [EdgeCost(a, b, POLICY.cost(a, b, w)) for (a, b), w in weights.items()]


def nx_graph(ids: list[int], edges: list[EdgeCost]) -> nx.Graph:
    g = nx.Graph()
    g.add_nodes_from(ids)
    g.add_weighted_edges_from((e.a, e.b, e.cost) for e in edges if e.cost is not None)
    return g


def assert_valid(router: Router, ids: list[int], edges: list[EdgeCost]) -> None:
    g = nx_graph(ids, edges)
    lengths = dict(nx.all_pairs_dijkstra_path_length(g))
    for s, d in itertools.permutations(ids, 2):
        path = router.path(s, d)
        if d not in lengths[s]:
            assert path is None and router.next_hop(s, d) is None and router.cost(s, d) is None
            continue
        assert path is not None and path[0] == s and path[-1] == d
        assert len(set(path)) == len(path), f"loop in {path}"
        assert all(g.has_edge(x, y) for x, y in itertools.pairwise(path)), f"{path} uses a missing edge"
        # A shortest path, with the cost routing reports for it.
        weight = sum(g[x][y]["weight"] for x, y in itertools.pairwise(path))
        assert math.isclose(weight, lengths[s][d], rel_tol=1e-9)
        assert math.isclose(router.cost(s, d) or 0, weight, rel_tol=1e-9)
        # Symmetric: the way back is the same path reversed.
        assert router.path(d, s) == path[::-1]
        # Hop by hop, as WireGuard checks it: X hands the packet for d to Y, and Y accepts source s
        # from X only if Y's own next hop toward s is X.
        for x, y in itertools.pairwise(path):
            assert router.next_hop(x, d) == y
            assert router.next_hop(y, s) == x
    for n in ids:
        assert router.next_hop(n, n) == n
        relays = {x for s, d in itertools.permutations(ids, 2) for x in (router.path(s, d) or [])[1:-1]}
        assert router.forwards(n) == (n in relays)


@settings(max_examples=150, deadline=None)
@given(graph=graphs(), data=st.data())
def test_routes_are_shortest_symmetric_and_consistent_hop_by_hop(graph, data):
    ids, weights = graph
    failed = set(data.draw(st.lists(st.sampled_from(sorted(weights)), unique=True))) if weights else set()
    edges = costs({p: w for p, w in weights.items() if p not in failed})
    assert_valid(Router(ids, edges), ids, edges)


@settings(max_examples=100, deadline=None)
@given(graph=graphs(max_nodes=10), data=st.data())
def test_incremental_changes_end_where_a_full_recompute_does(graph, data):
    ids, weights = graph
    current = {p: POLICY.cost(*p, w) for p, w in weights.items()}
    router = Router(ids, [EdgeCost(a, b, c) for (a, b), c in current.items()])
    nodes = list(ids)
    next_id = max(ids) + 1
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["edges", "edges", "add", "remove"]))
        if op == "edges" and len(nodes) >= 2:
            pairs = data.draw(
                st.lists(
                    st.sampled_from(list(itertools.combinations(nodes, 2))),
                    unique=True,
                    min_size=1,
                    max_size=4,
                )
            )
            batch = []
            for p in pairs:
                w = data.draw(st.none() | WEIGHTS)  # None: the link failed
                cost = None if w is None else POLICY.cost(*p, w)
                batch.append(EdgeCost(*p, cost))
                if cost is None:
                    current.pop(p, None)
                else:
                    current[p] = cost
            changed = router.set_edges(batch)
            assert changed <= set(nodes)
        elif op == "add":
            others = data.draw(st.lists(st.sampled_from(nodes), unique=True)) if nodes else []
            new = [EdgeCost(o, next_id, POLICY.cost(o, next_id, data.draw(WEIGHTS))) for o in others]
            router.add_node(next_id, new)
            current.update({(e.a, e.b): e.cost for e in new if e.cost is not None})
            nodes.append(next_id)
            next_id += 1
        elif op == "remove" and len(nodes) > 1:
            gone = data.draw(st.sampled_from(nodes))
            router.remove_node(gone)
            nodes.remove(gone)
            current = {p: c for p, c in current.items() if gone not in p}
        edges = [EdgeCost(a, b, c) for (a, b), c in current.items()]
        fresh = Router(nodes, edges)
        for s, d in itertools.product(nodes, repeat=2):
            assert router.next_hop(s, d) == fresh.next_hop(s, d), (s, d)
        assert [router.forwards(n) for n in nodes] == [fresh.forwards(n) for n in nodes]
    assert_valid(router, nodes, [EdgeCost(a, b, c) for (a, b), c in current.items()])


def test_set_edges_reports_exactly_the_nodes_whose_routes_changed():
    #   1 -- 2 -- 3 -- 4, plus 5 hanging off 4; the 2-3 link fails and 1-4 exists as a detour.
    w = {(1, 2): 1.0, (2, 3): 1.0, (3, 4): 1.0, (4, 5): 1.0, (1, 4): 30.0}
    router = Router(range(1, 6), costs(w))
    before = {(s, d): router.next_hop(s, d) for s in range(1, 6) for d in range(1, 6)}
    changed = router.set_edges([EdgeCost(2, 3, None)])
    after = {(s, d): router.next_hop(s, d) for s in range(1, 6) for d in range(1, 6)}
    moved = {s for (s, d), hop in after.items() if hop != before[(s, d)]}
    assert moved <= changed
    assert changed == {1, 2, 3, 4, 5}  # costs changed for 5 too (its path to 1 and 2 got longer)
    assert router.path(2, 3) == [2, 1, 4, 3]


def test_a_relay_is_used_only_when_it_saves_more_than_the_hop_penalty():
    # Direct 1-3 costs 45; through 2 it is 10 + 10 plus one extra hop penalty (20): 40 < 45 -> relay.
    router = Router([1, 2, 3], costs({(1, 2): 10.0, (2, 3): 10.0, (1, 3): 45.0}))
    assert router.next_hop(1, 3) == 2 and router.forwards(2)
    # Direct 35: the relay (40) is not enough better.
    router.set_edges([EdgeCost(1, 3, POLICY.cost(1, 3, 35.0))])
    assert router.next_hop(1, 3) == 3 and not router.forwards(2)


def test_bad_edges_are_refused():
    with pytest.raises(ValueError, match="loop"):
        Router([1], [EdgeCost(1, 1, 1.0)])
    with pytest.raises(ValueError, match="positive"):
        Router([1, 2], [EdgeCost(1, 2, 0.0)])
    router = Router([1, 2], [])
    with pytest.raises(ValueError, match="larger id"):
        router.add_node(2, [])
    assert router.next_hop(1, 2) is None and router.path(1, 2) is None


@settings(max_examples=60, deadline=None)
@given(graph=graphs(max_nodes=12), data=st.data())
def test_a_batch_of_changes_ends_where_a_full_recompute_does(graph, data):
    ids, weights = graph
    pairs = list(itertools.combinations(ids, 2))
    router = Router(ids, costs(weights))
    draws = [data.draw(st.none() | WEIGHTS) for _ in pairs]
    batch = [
        EdgeCost(a, b, None if w is None else POLICY.cost(a, b, w))
        for (a, b), w in zip(pairs, draws, strict=True)
    ]
    router.set_edges(batch)
    assert_valid(router, ids, [e for e in batch if e.cost is not None])


def test_a_subtree_too_large_to_repair_locally_is_recomputed():
    # A long chain 1-2-...-200 with a costly shortcut 1-200: cutting 1-2 re-roots almost everything.
    n = 200
    w = {(i, i + 1): 1.0 for i in range(1, n)}
    w[(1, n)] = 30.0
    edges = costs(w)
    router = Router(range(1, n + 1), edges)
    router.set_edges([EdgeCost(1, 2, None)])
    remaining = [e for e in edges if (e.a, e.b) != (1, 2)]
    fresh = Router(range(1, n + 1), remaining)
    for s in (1, 2, 50, 199):
        for d in range(1, n + 1):
            assert router.next_hop(s, d) == fresh.next_hop(s, d)
    assert router.path(1, 2) == [1, *range(n, 1, -1)]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_dense_meshes_repair_like_a_full_recompute(seed):
    """Degrees above the vector threshold take the numpy paths of the local repairs."""
    import random

    rng = random.Random(seed)
    n = 60
    ids = list(range(1, n + 1))
    current = {
        (a, b): POLICY.cost(a, b, rng.choice([1.0, 5.0, 10.0, 60.0]))
        for a, b in itertools.combinations(ids, 2)
    }
    router = Router(ids, [EdgeCost(a, b, c) for (a, b), c in current.items()])
    for _ in range(12):
        a, b = rng.sample(ids, 2)
        p = (min(a, b), max(a, b))
        cost = None if rng.random() < 0.3 else POLICY.cost(*p, rng.choice([0.5, 2.0, 30.0, 90.0]))
        router.set_edges([EdgeCost(*p, cost)])
        if cost is None:
            current.pop(p, None)
        else:
            current[p] = cost
    fresh = Router(ids, [EdgeCost(a, b, c) for (a, b), c in current.items()])
    for s, d in itertools.product(ids, repeat=2):
        assert router.next_hop(s, d) == fresh.next_hop(s, d), (s, d)
    assert [router.forwards(x) for x in ids] == [fresh.forwards(x) for x in ids]


def test_relayed_pairs_are_the_pairs_whose_path_has_a_relay_once_each():
    # 1 - 2 - 3 - 4 in a line, and 1 - 3 directly: 1-4 and 2-4 go through 3; the others are direct
    router = Router(
        [1, 2, 3, 4], [EdgeCost(1, 2, 1.0), EdgeCost(2, 3, 1.0), EdgeCost(3, 4, 1.0), EdgeCost(1, 3, 1.5)]
    )
    pairs = {(router.nodes[s], router.nodes[d]) for s, d in router.relayed_pairs().tolist()}
    assert pairs == {(1, 4), (2, 4)}
    assert Router([], []).relayed_pairs().shape == (0, 2)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_full_meshes_are_routed_like_networkx_whether_or_not_their_trees_are_stars(data):
    """A complete graph whose links are mostly fresh (every tree a star of direct edges, found without a
    search) with some slow or failed links (those trees searched), and nodes joining and leaving it."""
    ids = list(range(1, data.draw(st.integers(2, 14)) + 1))
    weights = st.sampled_from([None, 1.0, 10.0, 10.0, 10.0, 10.0, 45.0])  # None: the default (fresh)
    current = {}
    for a, b in itertools.combinations(ids, 2):
        if data.draw(st.integers(0, 9)) != 0:  # one link in ten is down
            current[a, b] = POLICY.cost(a, b, data.draw(weights))
    router = Router(ids, [EdgeCost(a, b, c) for (a, b), c in current.items()])
    assert_valid(router, ids, [EdgeCost(a, b, c) for (a, b), c in current.items()])
    joining = max(ids) + 1
    new = [EdgeCost(o, joining, POLICY.cost(o, joining, data.draw(weights))) for o in ids]
    router.add_node(joining, new)
    current.update({(e.a, e.b): e.cost for e in new})
    gone = data.draw(st.sampled_from(ids))
    router.remove_node(gone)
    nodes = [x for x in [*ids, joining] if x != gone]
    edges = [EdgeCost(a, b, c) for (a, b), c in current.items() if gone not in (a, b)]
    assert_valid(router, nodes, edges)


OFFSETS = st.sampled_from([0.0, 0.0, 0.0, 3.0, 5e8])  # 5e8: half the transit penalty of a non-relay


@st.composite
def implicit_meshes(draw: st.DrawFn, max_nodes: int = 10) -> tuple[list[int], DefaultLinks, dict]:
    """A full mesh given by its default links (base cost, jitter, per-node offsets) and the few links
    with state: measured (a cost) or down (None)."""
    ids = sorted(draw(st.sets(st.integers(1, 300), min_size=2, max_size=max_nodes)))
    # 30: the controller's default (a default link never loses to a relay); 60, 100: it can
    base = draw(st.sampled_from([POLICY.default_weight_ms + POLICY.hop_penalty_ms, 60.0, 100.0]))
    offsets = {n: o for n in ids if (o := draw(OFFSETS))}
    defaults = DefaultLinks(base, POLICY.perturbation_ms, offsets)
    pairs = list(itertools.combinations(ids, 2))
    chosen = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=len(pairs)))
    return ids, defaults, {p: explicit_cost(defaults, p, draw(st.none() | WEIGHTS)) for p in chosen}


def explicit_cost(defaults: DefaultLinks, p: tuple[int, int], w: float | None) -> float | None:
    off = defaults.offsets
    return None if w is None else POLICY.cost(*p, w) + (off.get(p[0], 0.0) + off.get(p[1], 0.0))


def materialized(ids: list[int], defaults: DefaultLinks, explicit: dict) -> list[EdgeCost]:
    """Every edge of the implicit mesh, as a plain graph has them (down links left out)."""
    off = defaults.offsets
    out = []
    for a, b in itertools.combinations(ids, 2):
        if (a, b) in explicit:
            cost = explicit[a, b]
        else:
            jitter = float(pair_jitter([a], [b], defaults.jitter)[0])
            cost = (defaults.base + jitter) + (off.get(a, 0.0) + off.get(b, 0.0))
        if cost is not None:
            out.append(EdgeCost(a, b, cost))
    return out


def snapshot(router: Router) -> dict[int, tuple[list[int | None], list[int], bool]]:
    """What a node's map is made of: its next hops, its costs in tenths, its forward flag."""
    ids = router.nodes
    return {
        s: (
            [router.next_hop(s, d) for d in ids],
            [-1 if (c := router.cost(s, d)) is None else round(c * 10) for d in ids],
            router.forwards(s),
        )
        for s in ids
    }


@settings(max_examples=120, deadline=None)
@given(mesh=implicit_meshes())
def test_an_implicit_full_mesh_is_routed_like_the_materialized_mesh(mesh):
    ids, defaults, explicit = mesh
    router = Router(ids, [EdgeCost(a, b, c) for (a, b), c in explicit.items()], defaults)
    edges = materialized(ids, defaults, explicit)
    assert_valid(router, ids, edges)
    # A link carries a route exactly when it is some route's first hop.
    first_hops = {
        tuple(sorted((s, h))) for s, d in itertools.permutations(ids, 2) if (h := router.next_hop(s, d))
    }
    for a, b in itertools.combinations(ids, 2):
        assert router.carries(a, b) == ((a, b) in first_hops)


@settings(max_examples=100, deadline=None)
@given(mesh=implicit_meshes(max_nodes=9), data=st.data())
def test_implicit_mesh_changes_end_where_a_full_recompute_does_and_name_who_moved(mesh, data):
    ids, defaults, explicit = mesh
    router = Router(ids, [EdgeCost(a, b, c) for (a, b), c in explicit.items()], defaults)
    nodes = list(ids)
    next_id = max(ids) + 1
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["edges", "edges", "edges", "add", "remove"]))
        before = snapshot(router)
        if op == "edges":
            pairs = data.draw(
                st.lists(
                    st.sampled_from(list(itertools.combinations(nodes, 2))),
                    unique=True,
                    min_size=1,
                    max_size=3,
                )
            )
            batch = [EdgeCost(*p, explicit_cost(defaults, p, data.draw(st.none() | WEIGHTS))) for p in pairs]
            explicit.update({(e.a, e.b): e.cost for e in batch})
            changed = router.set_edges(batch)
            after = snapshot(router)
            assert {n for n in nodes if after[n] != before[n]} <= changed
        elif op == "add":
            others = data.draw(st.lists(st.sampled_from(nodes), unique=True, max_size=3))
            offset = data.draw(OFFSETS)
            defaults = DefaultLinks(defaults.base, defaults.jitter, {**defaults.offsets, next_id: offset})
            new = [
                EdgeCost(o, next_id, explicit_cost(defaults, (o, next_id), data.draw(st.none() | WEIGHTS)))
                for o in others
            ]
            router.add_node(next_id, new, offset)
            explicit.update({(e.a, e.b): e.cost for e in new})
            nodes.append(next_id)
            next_id += 1
        elif len(nodes) > 2:
            gone = data.draw(st.sampled_from(nodes))
            router.remove_node(gone)
            nodes.remove(gone)
            explicit = {p: c for p, c in explicit.items() if gone not in p}
        fresh = Router(nodes, [EdgeCost(a, b, c) for (a, b), c in explicit.items()], defaults)
        assert snapshot(router) == snapshot(fresh)
    assert_valid(router, nodes, materialized(nodes, defaults, explicit))


def test_a_default_mesh_stores_nothing_and_a_cut_link_relays_one_pair():
    ids = list(range(1, 201))
    defaults = DefaultLinks(POLICY.default_weight_ms + POLICY.hop_penalty_ms, POLICY.perturbation_ms)
    router = Router(ids, [], defaults)
    assert router.relayed_pairs().shape == (0, 2) and not any(router.forwards(n) for n in ids)
    assert router.next_hop(3, 150) == 150 and router.cost(3, 150) == router.cost(150, 3)
    changed = router.set_edges([EdgeCost(3, 150, None)])
    via = router.next_hop(3, 150)
    assert via not in (None, 3, 150) and router.path(150, 3) == [150, via, 3]
    assert changed == {3, 150, via}  # the two ends (new route) and the relay (it now forwards)
    assert [router.nodes[i] for i in router.relayed_pairs()[0]] == [3, 150]


def test_a_node_going_offline_link_by_link_and_back_is_routed_like_a_fresh_computation():
    """Every peer reports its link to node 7 down, one report at a time, then back up: at each step
    the incremental routes are the full computation's, and the reports name every node that moved."""
    ids = list(range(1, 31))
    defaults = DefaultLinks(POLICY.default_weight_ms + POLICY.hop_penalty_ms, POLICY.perturbation_ms)
    explicit = {(a, a + 1): POLICY.cost(a, a + 1, 5.0 * (a % 4)) for a in range(1, 30)}
    router = Router(ids, [EdgeCost(a, b, c) for (a, b), c in explicit.items()], defaults)
    others = [y for y in ids if y != 7]
    for y, cost in [(y, None) for y in others] + [
        (y, POLICY.cost(min(7, y), max(7, y), None)) for y in others
    ]:
        p = (min(7, y), max(7, y))
        before = snapshot(router)
        changed = router.set_edges([EdgeCost(*p, cost)])
        explicit[p] = cost
        after = snapshot(router)
        assert {n for n in ids if after[n] != before[n]} <= changed
        assert after == snapshot(Router(ids, [EdgeCost(a, b, c) for (a, b), c in explicit.items()], defaults))
    assert router.candidate_pairs() == 0  # every link back at its default: nothing stored
