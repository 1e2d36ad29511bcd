"""Abandoned long-polls (issue #8 item 4): one node's credential opens 2,000 long-polls on a real
controller process (uvicorn on 127.0.0.1, plain HTTP), 250 connections at a time, each batch reset
(RST) once the controller has read it, five rounds in a row; how much the controller's RSS grows over its own baseline (measured in the same run
after one ordinary poll), and whether a real poll of that node still gets its push afterwards.

Goal: after the five rounds the RSS is within 20 MB of the baseline (polls end with their clients and
a node holds at most a few). Bounded: 5 x 2,000 connections, every wait has a deadline; loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.push import free_port, seed, start_controller
from controller.credentials import ensure_admin_credential
from wire import api

ROUNDS = 5
POLLS = 2000
BATCH = 250  # connections opened at once
POLL_TIMEOUT_S = 60
SETTLE_DEADLINE_S = 15.0
GOAL_MB = 20.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def settled_rss(pid: int) -> float:
    """The RSS once it has not moved by more than 0.5 MB for a second (at most SETTLE_DEADLINE_S)."""
    deadline = time.monotonic() + SETTLE_DEADLINE_S
    last = rss_mb(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        now = rss_mb(pid)
        if abs(now - last) < 0.5:
            return now
        last = now
    return last


async def abandon(port: int, credential: str, since: int, health: httpx.AsyncClient) -> None:
    """POLLS long-polls, BATCH at a time: sent, read by the controller (a health request sent after
    them has its answer), then every connection of the batch reset."""
    request = (
        f"GET {api.NETMAP}?since={since}&timeout={POLL_TIMEOUT_S} HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"authorization: Bearer {credential}\r\n\r\n"
    ).encode()

    async def one() -> asyncio.StreamWriter:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        return writer

    for start in range(0, POLLS, BATCH):
        batch = min(BATCH, POLLS - start)
        writers = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(batch))), 60)
        (await health.get(api.HEALTH)).raise_for_status()
        for w in writers:
            w.transport.abort()


async def run(port: int, credential: str, pid: int) -> dict[str, float]:
    auth = {"Authorization": f"Bearer {credential}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=POLL_TIMEOUT_S + 10) as c:
        r = await c.get(api.NETMAP, headers=auth)
        r.raise_for_status()
        since = r.json()["serial"]
        assert (
            await c.get(api.NETMAP, params={"since": since, "timeout": 0.2}, headers=auth)
        ).status_code == 204
        baseline = await settled_rss(pid)
        print(f"baseline RSS {baseline:.1f} MB (after one map and one held poll)", flush=True)
        rows = []
        for n in range(1, ROUNDS + 1):
            t = time.perf_counter()
            await abandon(port, credential, since, c)
            rss = await settled_rss(pid)
            rows.append(rss)
            print(
                f"round {n}: {POLLS} polls aborted in {time.perf_counter() - t:.1f} s, RSS {rss:.1f} MB "
                f"(+{rss - baseline:.1f})",
                flush=True,
            )
        health = time.perf_counter()
        (await c.get(api.HEALTH)).raise_for_status()
        health = time.perf_counter() - health
    return {"baseline": baseline, "after": rows[-1], "peak": max(rows), "health": health}


def main() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * POLLS:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8 * POLLS), hard))
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    state_dir = Path(tempfile.mkdtemp(prefix="wgmesh-bench-polls-", dir=base))
    process: subprocess.Popen[str] | None = None
    try:
        agents = seed(state_dir, 2)
        ensure_admin_credential(state_dir)
        port = free_port()
        process = start_controller(state_dir, port, args=["--insecure-http"])
        x = asyncio.run(run(port, agents[0].credential, process.pid))
    finally:
        if process is not None:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=15)
            if process.poll() is None:
                process.kill()
                process.wait()
        shutil.rmtree(state_dir, ignore_errors=True)
    growth = x["after"] - x["baseline"]
    ok = growth <= GOAL_MB
    print(
        f"\n{ROUNDS} x {POLLS} aborted polls: RSS {x['baseline']:.1f} -> {x['after']:.1f} MB "
        f"(+{growth:.1f} MB, peak +{x['peak'] - x['baseline']:.1f}); /v1/health after: {x['health'] * 1000:.0f} ms"
    )
    print(
        f"RESULT abandoned_polls growth_mb={growth:.1f} baseline_mb={x['baseline']:.1f} goal_mb={GOAL_MB:g} "
        f"{'OK' if ok else 'MISSED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
