"""Admin API figures at 1,000 nodes (issue #8 item 3): GET /v1/topology on a controller of 1,000
nodes with 4,000 measured links (average degree 8, the rest of the full mesh never measured), while
/v1/health is asked every 20 ms on the same event loop (in process, over httpx's ASGI transport).

Rows: the default answer (nodes and links), the routes of one source (`?source=`), the Graphviz text;
each with its time, its size and the longest /v1/health answer meanwhile. The baseline is a /v1/nodes
listing in the same run (every node's record: what any topology answer must at least carry).

Goal: the default answer <= 200 ms and <= 2 MB, and /v1/health never waits longer than 200 ms.
Bounded: every request has a deadline; nothing leaves the process.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from bench.push import seed
from controller.app import create_app
from controller.credentials import ensure_admin_credential
from controller.settings import Settings
from controller.sqlstore import SqlStore
from controller.topology import LinkRecord
from wire import api

NODES = 1000
LINKS = 4000
SEED = 20261202
DEADLINE_S = 600.0
PROBE_EVERY_S = 0.02
GOAL_S = 0.2
GOAL_BYTES = 2_000_000


def seed_links(db_url: str, ids: list[int], links: int) -> None:
    """Write `links` measured links between random pairs of `ids` (weights 1 to 100 ms) into the store."""
    rng = random.Random(SEED)
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < links:
        a, b = sorted(rng.sample(ids, 2))
        pairs.add((a, b))
    store = SqlStore(db_url)
    store.save_links([LinkRecord(a, b, round(rng.uniform(1.0, 100.0), 2)) for a, b in sorted(pairs)])
    store.close()


async def measured(
    client: httpx.AsyncClient, call: Callable[[], Awaitable[httpx.Response]]
) -> tuple[float, int, float]:
    """(seconds, bytes, longest /v1/health answer meanwhile) of one request."""
    worst = 0.0
    done = asyncio.Event()

    async def probe() -> None:
        nonlocal worst
        while not done.is_set():
            # from when the probe meant to ask: a blocked event loop delays the asking too
            t = time.perf_counter()
            await asyncio.sleep(PROBE_EVERY_S)
            (await client.get(api.HEALTH)).raise_for_status()
            worst = max(worst, time.perf_counter() - t - PROBE_EVERY_S)

    prober = asyncio.create_task(probe())
    await asyncio.sleep(2 * PROBE_EVERY_S)
    t = time.perf_counter()
    r = await asyncio.wait_for(call(), DEADLINE_S)
    elapsed = time.perf_counter() - t
    r.raise_for_status()
    done.set()
    await prober
    return elapsed, len(r.content), worst


async def run(settings: Settings, admin: str) -> dict[str, tuple[float, int, float]]:
    store = SqlStore(settings.database_url)
    app = create_app(settings, store)
    headers = {"Authorization": f"Bearer {admin}"}
    rows: dict[str, tuple[float, int, float]] = {}
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://controller", timeout=DEADLINE_S
        ) as c:
            await c.get(api.NODES, headers=headers)  # warm
            calls = {
                "baseline: GET /v1/nodes": lambda: c.get(api.NODES, headers=headers),
                "GET /v1/topology": lambda: c.get(api.TOPOLOGY, headers=headers),
                "GET /v1/topology?source=1": lambda: c.get(
                    api.TOPOLOGY, params={"source": 1}, headers=headers
                ),
                "GET /v1/topology?format=dot": lambda: c.get(
                    api.TOPOLOGY, params={"format": "dot"}, headers=headers
                ),
            }
            for label, call in calls.items():
                rows[label] = await measured(c, call)
                s, n, worst = rows[label]
                print(
                    f"{label:<34} {s:>8.3f} s {n / 1e6:>9.3f} MB   /v1/health worst {worst * 1000:>7.0f} ms",
                    flush=True,
                )
    finally:
        app.state.plane.close()
    return rows


def main() -> int:
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    state_dir = Path(tempfile.mkdtemp(prefix="wgmesh-bench-api-", dir=base))
    try:
        agents = seed(state_dir, NODES)
        admin, _ = ensure_admin_credential(state_dir)
        settings = Settings(state_dir=state_dir, mesh_cidr=ipaddress.ip_network("198.19.0.0/16"))
        seed_links(settings.database_url, [a.node_id for a in agents], LINKS)
        print(f"{NODES} nodes, {LINKS} measured links\n")
        rows = asyncio.run(run(settings, admin))
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    s, n, _ = rows["GET /v1/topology"]
    base_s = rows["baseline: GET /v1/nodes"][0]
    stall = max(w for _, _, w in rows.values())
    ok = s <= GOAL_S and n <= GOAL_BYTES and stall <= GOAL_S
    print(
        f"\nRESULT controller_api topology_s={s:.3f} topology_mb={n / 1e6:.3f} ratio_to_nodes={s / base_s:.1f} "
        f"health_worst_ms={stall * 1000:.0f} goal=<={GOAL_S}s,<={GOAL_BYTES / 1e6:g}MB {'OK' if ok else 'MISSED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
