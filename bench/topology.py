"""Routing figures: full next-hop computation for random connected graphs of 1,000 and 2,000 nodes at
average degree 8 (controller.routing on scipy's compiled Dijkstra), against networkx's
`all_pairs_dijkstra_path` on the same graph in the same run; and how long one link change takes at
1,000 nodes (down, back up, weight change) with the incremental update.

Goals: <= 0.3 s full at 1,000 nodes, >= 20x the baseline, one change <= 50 ms at 1,000 nodes.
Every run also checks that both computations choose the same paths (shortest paths are unique).
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import networkx as nx

from controller.routing import EdgeCost, Router
from controller.topology import LinkPolicy

DEGREE = 8
SIZES = (1000, 2000)
CHANGES = 60
SEED = 20261124
POLICY = LinkPolicy()
T = TypeVar("T")


def random_connected_graph(n: int, degree: int, rng: random.Random) -> nx.Graph:
    """A random spanning tree plus random extra edges up to n*degree/2 edges, RTTs 1-100 ms."""
    g = nx.Graph()
    order = list(range(1, n + 1))
    rng.shuffle(order)
    g.add_nodes_from(order)
    for i in range(1, n):
        g.add_edge(order[i], order[rng.randrange(i)])
    while g.number_of_edges() < n * degree // 2:
        a, b = rng.randint(1, n), rng.randint(1, n)
        if a != b:
            g.add_edge(a, b)
    for a, b in g.edges:
        g[a][b]["cost"] = POLICY.cost(a, b, rng.uniform(1.0, 100.0))
    return g


def edges_of(g: nx.Graph) -> list[EdgeCost]:
    return [EdgeCost(a, b, d["cost"]) for a, b, d in g.edges(data=True)]


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def full_routing(n: int, rng: random.Random) -> dict[str, float]:
    g = random_connected_graph(n, DEGREE, rng)
    edges = edges_of(g)
    runs = [timed(lambda: Router(g.nodes, edges)) for _ in range(3)]
    ours = statistics.median(t for t, _ in runs)
    router = runs[0][1]
    baseline, paths = timed(lambda: dict(nx.all_pairs_dijkstra_path(g, weight="cost")))
    mismatches = sum(
        1 for s in rng.sample(list(g.nodes), 50) for d in g.nodes if router.path(s, d) != paths[s][d]
    )
    return {
        "nodes": n,
        "edges": g.number_of_edges(),
        "ours": ours,
        "baseline": baseline,
        "mismatches": mismatches,
    }


def link_changes(n: int, rng: random.Random) -> dict[str, float]:
    g = random_connected_graph(n, DEGREE, rng)
    router = Router(g.nodes, edges_of(g))
    edges = list(g.edges)
    times: dict[str, list[float]] = {"down": [], "up": [], "weight": []}
    touched: list[int] = []
    for _ in range(CHANGES // 3):
        a, b = rng.choice(edges)
        cost = g[a][b]["cost"]
        for kind, change in (
            ("down", EdgeCost(a, b, None)),
            ("up", EdgeCost(a, b, cost)),
            ("weight", EdgeCost(a, b, POLICY.cost(a, b, rng.uniform(1.0, 100.0)))),
        ):
            t, changed = timed(lambda change=change: router.set_edges([change]))
            times[kind].append(t)
            touched.append(len(changed))
        g[a][b]["cost"] = change.cost
    fresh = Router(g.nodes, edges_of(g))
    sample = rng.sample(list(g.nodes), 30)
    mismatches = sum(1 for s in sample for d in g.nodes if router.next_hop(s, d) != fresh.next_hop(s, d))
    every = [t for ts in times.values() for t in ts]
    return {
        "median_ms": statistics.median(every) * 1000,
        "p95_ms": sorted(every)[int(0.95 * (len(every) - 1))] * 1000,
        "max_ms": max(every) * 1000,
        "down_ms": statistics.median(times["down"]) * 1000,
        "up_ms": statistics.median(times["up"]) * 1000,
        "weight_ms": statistics.median(times["weight"]) * 1000,
        "nodes_touched": statistics.median(touched),
        "mismatches": mismatches,
    }


def full_mesh(n: int, rng: random.Random) -> dict[str, float]:
    """The controller's default policy: every pair linked. One node's first report moves all of its
    links off the default weight at once."""
    edges = [EdgeCost(a, b, POLICY.cost(a, b, None)) for a in range(1, n + 1) for b in range(a + 1, n + 1)]
    build, router = timed(lambda: Router(range(1, n + 1), edges))
    x = rng.randint(1, n)
    report = [
        EdgeCost(min(x, y), max(x, y), POLICY.cost(x, y, rng.uniform(1.0, 5.0)))
        for y in range(1, n + 1)
        if y != x
    ]
    first_report, _ = timed(lambda: router.set_edges(report))
    a, b = rng.sample(range(1, n + 1), 2)
    one_down, _ = timed(lambda: router.set_edges([EdgeCost(min(a, b), max(a, b), None)]))
    return {"edges": len(edges), "build": build, "report": first_report, "down": one_down}


def main() -> int:
    rng = random.Random(SEED)
    print(f"full routing, random connected graphs, average degree {DEGREE} (median of 3 runs)")
    print(f"{'nodes':>6} {'edges':>6} {'ours s':>8} {'networkx s':>11} {'speedup':>8} {'same paths':>11}")
    rows = []
    for n in SIZES:
        r = full_routing(n, rng)
        rows.append(r)
        same = "yes" if r["mismatches"] == 0 else f"NO ({r['mismatches']})"
        print(
            f"{n:>6} {r['edges']:>6} {r['ours']:>8.3f} {r['baseline']:>11.2f} {r['baseline'] / r['ours']:>7.1f}x {same:>11}",
            flush=True,
        )
    c = link_changes(1000, rng)
    print(f"\none link change at 1000 nodes ({CHANGES} changes: down, back up, new weight)")
    print(
        f"{'median ms':>10} {'p95 ms':>7} {'max ms':>7} {'down':>6} {'up':>6} {'weight':>7} {'nodes told':>11}"
    )
    print(
        f"{c['median_ms']:>10.1f} {c['p95_ms']:>7.1f} {c['max_ms']:>7.1f} {c['down_ms']:>6.1f} {c['up_ms']:>6.1f} "
        f"{c['weight_ms']:>7.1f} {c['nodes_touched']:>11.0f}"
    )
    m = full_mesh(1000, rng)
    print("\nfull mesh of 1000 nodes (the controller's default policy; for information, no goal)")
    print(f"{'edges':>7} {'full s':>7} {'one node reports 999 links ms':>30} {'one link down ms':>17}")
    print(f"{m['edges']:>7} {m['build']:>7.2f} {m['report'] * 1000:>30.1f} {m['down'] * 1000:>17.1f}")
    r1, r2 = rows
    same_paths = r1["mismatches"] == r2["mismatches"] == c["mismatches"] == 0
    ok = r1["ours"] <= 0.3 and r1["baseline"] / r1["ours"] >= 20 and c["p95_ms"] <= 50 and same_paths
    print(
        f"RESULT name=topology full_1000_s={r1['ours']:.3f} networkx_1000_s={r1['baseline']:.2f} "
        f"speedup_1000={r1['baseline'] / r1['ours']:.1f} full_2000_s={r2['ours']:.3f} "
        f"networkx_2000_s={r2['baseline']:.2f} speedup_2000={r2['baseline'] / r2['ours']:.1f} "
        f"change_1000_median_ms={c['median_ms']:.1f} change_1000_p95_ms={c['p95_ms']:.1f} "
        f"change_1000_max_ms={c['max_ms']:.1f} fullmesh_1000_s={m['build']:.2f} "
        f"fullmesh_1000_report_ms={m['report'] * 1000:.1f} same_paths={'yes' if same_paths else 'no'} "
        f"goals_met={'yes' if ok else 'no'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
