"""The topology page's cost (issue #14): CPU of a controller of 1,000 nodes (4,000 measured links) while
5 browsers watch /ui/ for WATCH_S, once with the mesh still and once with a link report every second,
each against the baseline in the same controller and run: the event stream as it was before
controller.ui_feed (bench.ui_polled: every stream looked every 0.25 s, the view computed again per
half poll whether or not anything changed). Also: how long after a report every browser had the view
that shows it (the page's goal: within 1 s).

The controller is its own process (its CPU from /proc), on loopback, plain HTTP; the browsers are
event-stream readers in this process. Bounded: every wait has a deadline; nothing leaves the machine.

Goal: the real stream costs at most a third of the baseline's CPU with the mesh still, and every
browser has a change within 1 s of its report.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.controller_api import seed_links
from bench.push import SimAgent, cpu_seconds, free_port, seed
from bench.ui_polled import PATH as POLLED_PATH
from controller.credentials import ensure_admin_credential
from wire import api

NODES = 1000
LINKS = 4000
BROWSERS = 5
WATCH_S = 10.0
REPORT_EVERY_S = 1.0
START_DEADLINE_S = 120.0
FIRST_VIEW_DEADLINE_S = 60.0
GOAL_RATIO = 3.0
GOAL_LATENCY_S = 1.0
MESH = ipaddress.ip_network("198.19.0.0/16")


Row = tuple[float, list[float], int, int]


def serve(state_dir: Path, port: int) -> None:
    """The bench's controller: the real app with the baseline stream beside the real one."""
    import uvicorn

    from bench.ui_polled import add_polled_events
    from controller.app import create_app
    from controller.settings import Settings
    from controller.sqlstore import SqlStore

    settings = Settings(state_dir=state_dir, mesh_cidr=MESH)
    app = create_app(settings, SqlStore(settings.database_url))
    add_polled_events(app)
    try:
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
    finally:
        app.state.plane.close()


async def watch(
    client: httpx.AsyncClient, path: str, cookie: str, arrivals: list[float], size: list[int]
) -> None:
    """One browser: the time of every view or delta that arrives, and the bytes of their data."""
    async with client.stream("GET", path, headers={"Cookie": f"wgmesh_ui={cookie}"}) as events:
        events.raise_for_status()
        async for line in events.aiter_lines():
            if line in ("event: view", "event: delta"):
                arrivals.append(time.monotonic())
            elif line.startswith("data: "):
                size[0] += len(line)


async def phase(base: str, path: str, cookie: str, pid: int, reporter: SimAgent | None, peer: int) -> Row:
    """(controller CPU seconds over WATCH_S, seconds from each report until every browser had a view
    after it, views and deltas received, bytes of them while measured) with BROWSERS watching `path`."""
    timeout = httpx.Timeout(30.0, read=None)
    async with httpx.AsyncClient(base_url=base, timeout=timeout) as client:
        arrivals: list[list[float]] = [[] for _ in range(BROWSERS)]
        size = [0]
        watchers = [asyncio.create_task(watch(client, path, cookie, a, size)) for a in arrivals]
        try:
            deadline = time.monotonic() + FIRST_VIEW_DEADLINE_S
            while not all(arrivals):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{path}: no first view within {FIRST_VIEW_DEADLINE_S} s")
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # settled: the first views sent
            size[0] = 0
            sent: list[float] = []
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            while time.monotonic() - t0 < WATCH_S:
                if reporter is not None:
                    rtt = 5.0 if len(sent) % 2 else 60.0
                    measurement = {"peer_id": peer, "rtt_ms": rtt, "loss": 0.0, "handshake_age_s": 3}
                    sent.append(time.monotonic())
                    r = await client.post(
                        api.LINKS,
                        json={"measurements": [measurement]},
                        headers={"Authorization": f"Bearer {reporter.credential}"},
                    )
                    r.raise_for_status()
                await asyncio.sleep(REPORT_EVERY_S)
            cpu = cpu_seconds(pid) - cpu0
        finally:
            for w in watchers:
                w.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
    latencies = []
    for t in sent:
        after = [next((x for x in a if x >= t), None) for a in arrivals]
        if all(x is not None for x in after):
            latencies.append(max(x for x in after if x is not None) - t)
    return cpu, latencies, sum(len(a) for a in arrivals), size[0]


async def login(base: str, admin: str) -> str:
    """A session cookie, the way a browser gets one: a one-time link from the admin API."""
    async with httpx.AsyncClient(base_url=base, timeout=30.0) as client:
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            try:
                if (await client.get(api.HEALTH)).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the controller did not answer within {START_DEADLINE_S} s")
            await asyncio.sleep(0.2)
        r = await client.post(api.UI_TICKETS, headers={"Authorization": f"Bearer {admin}"})
        r.raise_for_status()
        r = await client.get(r.json()["path"])
        return str(r.cookies["wgmesh_ui"])


async def run(base: str, admin: str, pid: int, agents: list[SimAgent]) -> dict[str, Row]:
    cookie = await login(base, admin)
    rows: dict[str, Row] = {}
    for scenario, reporter in (("still", None), ("a report a second", agents[0])):
        for label, path in (("baseline", POLLED_PATH), ("change-driven", "/ui/api/events")):
            row = await phase(base, path, cookie, pid, reporter, agents[1].node_id)
            rows[f"{label}, {scenario}"] = row
            cpu, latencies, views, size = row
            late = f"{max(latencies):.2f}" if latencies else "-"
            median = f"{statistics.median(latencies):.2f}" if latencies else "-"
            print(
                f"{label + ', ' + scenario:<36} CPU {cpu:6.2f} s in {WATCH_S:.0f} s   sent {views:>4} ({size / 1e6:6.2f} MB)"
                f"   report to every browser: median {median} s, worst {late} s   load {load()}",
                flush=True,
            )
    return rows


def load() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 1)[0]


def main() -> int:
    base_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
    state_dir = Path(tempfile.mkdtemp(prefix="wgmesh-bench-ui-", dir=base_dir))
    server = None
    try:
        agents = seed(state_dir, NODES)
        seed_links(f"sqlite:///{state_dir / 'controller.db'}", [a.node_id for a in agents], LINKS)
        admin, _ = ensure_admin_credential(state_dir)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "bench.ui_watch", "--serve", str(state_dir), str(port)],
            stdout=subprocess.DEVNULL,
        )
        print(f"{NODES} nodes, {LINKS} measured links, {BROWSERS} browsers watching {WATCH_S:.0f} s each\n")
        rows = asyncio.run(run(f"http://127.0.0.1:{port}", admin, server.pid, agents))
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(state_dir, ignore_errors=True)
    still = rows["baseline, still"][0] / max(rows["change-driven, still"][0], 1e-3)
    busy = rows["baseline, a report a second"][0] / max(rows["change-driven, a report a second"][0], 1e-3)
    latencies = rows["change-driven, a report a second"][1]
    worst = max(latencies) if latencies else float("inf")
    ok = still >= GOAL_RATIO and worst <= GOAL_LATENCY_S
    print(
        f"\nRESULT ui_watch cpu_ratio_still={still:.1f} cpu_ratio_report_per_s={busy:.1f} "
        f"change_shown_worst_s={worst:.2f} load={load()} "
        f"goal=ratio>={GOAL_RATIO:g},<={GOAL_LATENCY_S:g}s {'OK' if ok else 'MISSED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(Path(sys.argv[2]), int(sys.argv[3]))
        sys.exit(0)
    sys.exit(main())
