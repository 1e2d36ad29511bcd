"""Routing figures on the controller's graph, the implicit full mesh: every node has measured
`MEASURED` of its links (rtt 1-100 ms, a tenth of them down), every other link is a default link.

For 1,000 / 2,000 / 5,000 nodes: one full computation, one link change (down, back up, new weight;
median, p95 and max of `CHANGES`), a node going offline (`OFFLINE_REPORTS` peers report their link
to it down, one report each, then back up: median per report), one enrollment and one removal, and the routing state's memory
(tracemalloc: what the Router holds after building, and its peak while building). The baseline is the
dense Router this replaced (bench/baseline_routing.py) on the same mesh materialized as n(n-1)/2 edges,
in the same process, at the sizes where it fits (`--baseline 1000,2000`; at 5,000 it would hold 12.5 M
edges and 300 MB of matrices).

Goals (issue #18): a full computation <= 5 s and one link change <= 50 ms at 5,000 nodes. Wall-clock
figures: read them with the load average printed next to them (the process's CPU time is printed too).
Every run checks the routes against the baseline (where it ran) or a fresh full computation.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from bench import baseline_routing
from controller.routing import DefaultLinks, EdgeCost, Router, pair_jitter
from controller.topology import LinkPolicy

SIZES = (1000, 2000, 5000)
MEASURED = 8
DOWN = 0.1
CHANGES = 30
OFFLINE_REPORTS = 300
SEED = 20261202
POLICY = LinkPolicy()
T = TypeVar("T")


@dataclass(frozen=True)
class Mesh:
    n: int
    defaults: DefaultLinks
    explicit: dict[tuple[int, int], float | None]  # the links with state: cost, None when down

    def edges(self) -> list[EdgeCost]:
        return [EdgeCost(a, b, c) for (a, b), c in self.explicit.items()]

    def materialized(self) -> list[baseline_routing.EdgeCost]:
        """Every up link as a plain edge, for the dense baseline."""
        out = []
        base, scale = self.defaults.base, self.defaults.jitter
        for a in range(1, self.n + 1):
            others = list(range(a + 1, self.n + 1))
            jitter = pair_jitter([a] * len(others), others, scale).tolist() if others else []
            for b, j in zip(others, jitter, strict=True):
                c = self.explicit[a, b] if (a, b) in self.explicit else base + j
                if c is not None:
                    out.append(baseline_routing.EdgeCost(a, b, c))
        return out


def mesh_of(n: int, rng: random.Random) -> Mesh:
    explicit: dict[tuple[int, int], float | None] = {}
    for a in range(1, n + 1):
        for _ in range(MEASURED // 2):  # each link has two ends: MEASURED per node on average
            b = rng.randint(1, n)
            if a != b:
                lo, hi = min(a, b), max(a, b)
                down = rng.random() < DOWN
                explicit[lo, hi] = None if down else POLICY.cost(lo, hi, rng.uniform(1.0, 100.0))
    defaults = DefaultLinks(POLICY.default_weight_ms + POLICY.hop_penalty_ms, POLICY.perturbation_ms)
    return Mesh(n, defaults, explicit)


def timed(fn: Callable[[], T]) -> tuple[float, float, T]:
    """Wall-clock and process CPU seconds of one call, and its result."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def traced(fn: Callable[[], T]) -> tuple[float, float, T]:
    """MB held after the call (by what it returns) and MB at its peak, as tracemalloc counts them."""
    gc.collect()
    tracemalloc.start()
    try:
        result = fn()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return held / 1e6, peak / 1e6, result


def changes_of(mesh: Mesh, rng: random.Random) -> list[EdgeCost]:
    """CHANGES link changes, in threes: a link goes down, comes back, takes a new weight."""
    keys = list(mesh.explicit)
    out = []
    for _ in range(CHANGES // 3):
        a, b = rng.choice(keys)
        out += [
            EdgeCost(a, b, None),
            EdgeCost(a, b, POLICY.cost(a, b, None)),
            EdgeCost(a, b, POLICY.cost(a, b, rng.uniform(1.0, 100.0))),
        ]
    return out


def per_change(apply: Callable[[EdgeCost], object], changes: Sequence[EdgeCost]) -> list[float]:
    out = []
    for c in changes:
        start = time.perf_counter()
        apply(c)
        out.append(time.perf_counter() - start)
    return out


def ms(xs: Sequence[float]) -> tuple[float, float, float]:
    s = sorted(xs)
    return statistics.median(s) * 1000, s[int(0.95 * (len(s) - 1))] * 1000, s[-1] * 1000


def node_offline(router: Router, x: int, rng: random.Random) -> tuple[list[float], list[float]]:
    """A node goes offline: OFFLINE_REPORTS peers, one report each, say their link to it is down; then
    the same peers see it back (at the default weight). Seconds per report, each way."""
    peers = rng.sample([y for y in router.nodes if y != x], min(OFFLINE_REPORTS, len(router) - 1))
    down = per_change(lambda c: router.set_edges([c]), [EdgeCost(min(x, y), max(x, y), None) for y in peers])
    up = per_change(
        lambda c: router.set_edges([c]),
        [EdgeCost(min(x, y), max(x, y), POLICY.cost(min(x, y), max(x, y), None)) for y in peers],
    )
    return down, up


def mismatches(router: Router, other: Callable[[int, int], int | None], n: int, rng: random.Random) -> int:
    sample = rng.sample(range(1, n + 1), min(n, 20))
    return sum(1 for s in sample for d in range(1, n + 1) if router.next_hop(s, d) != other(s, d))


def run(n: int, baseline: bool, rng: random.Random) -> dict[str, float | str]:
    mesh = mesh_of(n, rng)
    edges = mesh.edges()
    wall, cpu, router = timed(lambda: Router(range(1, n + 1), edges, mesh.defaults))
    held, peak, _ = traced(lambda: Router(range(1, n + 1), edges, mesh.defaults))
    changes = changes_of(mesh, rng)
    times = per_change(lambda c: router.set_edges([c]), changes)
    for c in changes:
        mesh.explicit[c.a, c.b] = c.cost
    fresh = Router(range(1, n + 1), mesh.edges(), mesh.defaults)
    bad = mismatches(router, fresh.next_hop, n, rng)
    offline, back = node_offline(router, rng.randint(1, n), rng)
    join, _, _ = timed(lambda: router.add_node(n + 1, []))
    leave, _, _ = timed(lambda: router.remove_node(rng.randint(1, n)))
    row: dict[str, float | str] = {
        "nodes": n,
        "links_with_state": len(mesh.explicit),
        "stored_pairs": router.candidate_pairs(),
        "full_s": wall,
        "full_cpu_s": cpu,
        "held_mb": held,
        "peak_mb": peak,
        "change_median_ms": ms(times)[0],
        "change_p95_ms": ms(times)[1],
        "change_max_ms": ms(times)[2],
        "offline_ms": ms(offline)[0],
        "offline_max_ms": ms(offline)[2],
        "back_ms": ms(back)[0],
        "join_ms": join * 1000,
        "leave_ms": leave * 1000,
        "load": os.getloadavg()[0],
    }
    if baseline:
        row |= run_baseline(mesh, rng)
    row["mismatches"] = bad + int(row.get("baseline_mismatches", 0))
    return row


def run_baseline(mesh: Mesh, rng: random.Random) -> dict[str, float | str]:
    """The dense Router on the same (changed) mesh, materialized."""
    n = mesh.n
    ours = Router(range(1, n + 1), mesh.edges(), mesh.defaults)  # the one measured had a join and a removal
    edges = mesh.materialized()
    wall, _, old = timed(lambda: baseline_routing.Router(range(1, n + 1), edges))
    held, peak, _ = traced(lambda: baseline_routing.Router(range(1, n + 1), edges))
    changes = changes_of(mesh, rng)
    times = per_change(lambda c: old.set_edges([baseline_routing.EdgeCost(c.a, c.b, c.cost)]), changes)
    for c in changes:
        ours.set_edges([c])
    return {
        "baseline_full_s": wall,
        "baseline_held_mb": held,
        "baseline_peak_mb": peak,
        "baseline_change_median_ms": ms(times)[0],
        "baseline_mismatches": mismatches(ours, old.next_hop, n, rng),
    }


def ratio(row: dict[str, float | str], ours: str, theirs: str) -> str:
    if theirs not in row:
        return "-"
    return f"{float(row[theirs]) / max(float(row[ours]), 1e-9):.1f}x"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="node counts, comma-separated")
    parser.add_argument("--baseline", default="1000", help="sizes the dense baseline also runs at ('' none)")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x]
    baseline = {int(x) for x in args.baseline.split(",") if x}
    rng = random.Random(SEED)
    print(
        f"implicit full mesh: {MEASURED} measured links per node ({DOWN:.0%} down), the rest default links; "
        "old = the dense Router on the materialized mesh, same process"
    )
    header = (
        f"{'nodes':>6} {'state':>6} {'stored':>7} {'full s':>7} {'cpu s':>6} {'old s':>7} {'x':>6} "
        f"{'held MB':>8} {'peak MB':>8} {'old held':>9} {'x':>7} {'change ms':>10} {'p95':>6} {'max':>6} "
        f"{'old ms':>7} {'offline':>8} {'back':>6} {'join ms':>8} {'leave ms':>9} {'load':>5} {'same':>5}"
    )
    print(header)
    rows = []
    for n in sizes:
        r = run(n, n in baseline, rng)
        rows.append(r)

        def f(key: str, fmt: str, row: dict[str, float | str] = r) -> str:
            return format(float(row[key]), fmt) if key in row else "-"

        print(
            f"{n:>6} {r['links_with_state']:>6} {r['stored_pairs']:>7} {f('full_s', '.2f'):>7} "
            f"{f('full_cpu_s', '.2f'):>6} {f('baseline_full_s', '.2f'):>7} "
            f"{ratio(r, 'full_s', 'baseline_full_s'):>6} {f('held_mb', '.1f'):>8} {f('peak_mb', '.1f'):>8} "
            f"{f('baseline_held_mb', '.0f'):>9} {ratio(r, 'held_mb', 'baseline_held_mb'):>7} "
            f"{f('change_median_ms', '.1f'):>10} {f('change_p95_ms', '.1f'):>6} {f('change_max_ms', '.1f'):>6} "
            f"{f('baseline_change_median_ms', '.1f'):>7} {f('offline_ms', '.1f'):>8} {f('back_ms', '.1f'):>6} "
            f"{f('join_ms', '.1f'):>8} {f('leave_ms', '.1f'):>9} "
            f"{f('load', '.1f'):>5} {'yes' if r['mismatches'] == 0 else 'NO':>5}",
            flush=True,
        )
    same = all(r["mismatches"] == 0 for r in rows)
    big = next((r for r in rows if r["nodes"] == 5000), None)
    ok = big is not None and float(big["full_s"]) <= 5 and float(big["change_p95_ms"]) <= 50 and same
    fields = " ".join(
        f"{k}_{r['nodes']}={float(v):.3f}"
        for r in rows
        for k, v in r.items()
        if k not in ("nodes", "mismatches") and isinstance(v, float | int)
    )
    print(
        f"RESULT name=topology {fields} same_paths={'yes' if same else 'no'} goals_met={'yes' if ok else 'no'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
