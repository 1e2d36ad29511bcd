"""Slow clients (issue #8 item 2): connections that send half a request, no credential needed, against
a real controller process (uvicorn on 127.0.0.1, plain HTTP: the guard is the HTTP layer's).

1. 10,000 connections each send half a request head and then nothing. While they are open, 1,000
   simulated agents (bench.push's) long-poll with delta=1 and a new host enrolls: how long the
   enrollment takes and until every agent holds its new map. 15 s after the last of them opened: how
   many of the 10,000 connections the controller still keeps open. The baseline is the same push with no
   attack, in the same run.
2. A controller limited to 1,024 open files gets 1,100 such connections: how many lines it writes to
   its stderr in the next 10 s, and whether /v1/health answers meanwhile.

Goals: no half request open after 15 s; the push under attack within 2x the baseline (and <= 2 s); at
most 10 log lines in 10 s. Bounded: a fixed number of connections, every wait has a deadline,
loopback only; the controllers are child processes ended by their pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.push import (
    MESH,
    AgentConnection,
    Polling,
    SimAgent,
    enroll_request,
    fetch_all,
    free_port,
    poll_forever,
    ready,
    seed,
)
from controller.credentials import ensure_admin_credential
from wire import api

AGENTS = 1000
SLOW = 10_000
FLOOD_LIMIT = 1024
FLOOD = 1100
FLOOD_WINDOW_S = 10.0
OPEN_AFTER_S = 15.0
PUSH_DEADLINE_S = 60.0
HALF_REQUEST = b"GET /v1/health HTTP/1.1\r\nhost: 127.0.0.1\r\nuser-agent: slow"


def start(state_dir: Path, port: int, stderr: Path, fd_limit: int | None = None) -> subprocess.Popen[str]:
    def limit() -> None:
        if fd_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    cmd = [sys.executable, "-c", "import sys; from wgmesh.cli import main; sys.exit(main())"]
    cmd += ["controller", "serve", "--listen", f"127.0.0.1:{port}", "--state-dir", str(state_dir)]
    cmd += ["--mesh-cidr", str(MESH), "--insecure-http"]
    with stderr.open("w") as err:
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, preexec_fn=limit)
    return ready(process, lambda: stderr.read_text()[-2000:])


def end(process: subprocess.Popen[str] | None) -> None:
    if process is None:
        return
    process.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=15)
    if process.poll() is None:
        process.kill()
        process.wait()


async def open_slow(port: int, count: int) -> list[socket.socket]:
    """`count` connections that each sent half a request head."""
    loop = asyncio.get_running_loop()
    out: list[socket.socket] = []

    async def one() -> None:
        s = socket.socket()
        s.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", port)), 10)
            await loop.sock_sendall(s, HALF_REQUEST)
        except (OSError, TimeoutError):
            s.close()
            return
        out.append(s)

    for start_at in range(0, count, 500):
        await asyncio.gather(*(one() for _ in range(min(500, count - start_at))))
    return out


def still_open(socks: list[socket.socket]) -> int:
    n = 0
    for s in socks:
        try:
            if s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                continue  # closed by the controller
            n += 1  # it answered something: open
        except BlockingIOError:
            n += 1
        except OSError:
            continue  # reset
    return n


async def push(client: httpx.AsyncClient, agents: list[SimAgent], key: str, i: int) -> tuple[float, float]:
    """(enrollment s, s until every agent holds the map with the new host) while agents long-poll."""
    polling = Polling(delta=True)
    tasks = [asyncio.create_task(poll_forever(a, polling)) for a in agents]
    try:
        await asyncio.sleep(1.0)  # the polls are parked
        for a in agents:
            a.got.clear()
        nonce = (await client.post(api.ENROLL_NONCE)).json()["nonce"]
        request, wg = enroll_request(key, nonce, i)
        polling.marker = wg.encode()
        t = time.perf_counter()
        r = await client.post(
            api.ENROLL, content=request.model_dump_json(), headers={"content-type": "application/json"}
        )
        enrolled = time.perf_counter() - t
        r.raise_for_status()
        deadline = t + PUSH_DEADLINE_S
        while sum(1 for a in agents if a.got) < len(agents):
            for task in tasks:
                if task.done() and task.exception():
                    raise task.exception()  # type: ignore[misc]
            if time.perf_counter() > deadline:
                raise RuntimeError(
                    f"only {sum(1 for a in agents if a.got)} of {len(agents)} agents got the map"
                )
            await asyncio.sleep(0.005)
        return enrolled, max(min(a.got.values()) for a in agents) - t
    finally:
        polling.stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def attack(port: int, admin: str, agents: list[SimAgent], pid: int) -> dict[str, float]:
    auth = {"Authorization": f"Bearer {admin}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=PUSH_DEADLINE_S) as client:
        r = await client.post(api.PREAUTH_KEYS, json={"reusable": True}, headers=auth)
        r.raise_for_status()
        key = r.json()["key"]
        for a in agents:
            a.conn = AgentConnection(port, a.credential, None)  # type: ignore[arg-type]
        try:
            await fetch_all(agents)
            await push(client, agents, key, 1)  # warm-up: every agent's connection and first poll
            base_enroll, base_push = await push(client, agents, key, 2)
            print(
                f"no attack:   enrollment {base_enroll:.3f} s, all {AGENTS} agents hold the new map in {base_push:.3f} s",
                flush=True,
            )
            files_before = open_files(pid)
            t = time.perf_counter()
            slow = await open_slow(port, SLOW)
            opened = time.perf_counter() - t
            print(f"{len(slow)} half requests open ({opened:.1f} s to open)", flush=True)
            try:
                enroll_s, push_s = await push(client, agents, key, 3)
                print(
                    f"under attack: enrollment {enroll_s:.3f} s, all {AGENTS} agents hold the new map in {push_s:.3f} s",
                    flush=True,
                )
                left = t + opened + OPEN_AFTER_S - time.perf_counter()  # the last one opened is that old
                if left > 0:
                    await asyncio.sleep(left)
                kept = still_open(slow)
                held = open_files(pid) - files_before
                print(f"the controller holds {held} more open files than before the attack", flush=True)
                print(
                    f"{OPEN_AFTER_S:.0f} s after the last one opened: {kept}/{len(slow)} half requests still open",
                    flush=True,
                )
            finally:
                for s in slow:
                    s.close()
        finally:
            for a in agents:
                if a.conn is not None:
                    await a.conn.close()
    return {
        "base_push": base_push,
        "push": push_s,
        "enroll": enroll_s,
        "kept": kept,
        "slow": len(slow),
        "held": held,
    }


async def flood(port: int, stderr: Path) -> tuple[int, int, float | None]:
    """(stderr lines, stderr bytes) in FLOOD_WINDOW_S after FLOOD half requests, and how long
    /v1/health took at the end of the window (None: no answer within 5 s)."""
    before = stderr.stat().st_size
    slow = await open_slow(port, FLOOD)
    try:
        await asyncio.sleep(FLOOD_WINDOW_S)
        t = time.perf_counter()
        health: float | None
        try:
            async with httpx.AsyncClient(timeout=5) as c:
                (await c.get(f"http://127.0.0.1:{port}{api.HEALTH}")).raise_for_status()
            health = time.perf_counter() - t
        except httpx.HTTPError:
            health = None
    finally:
        for s in slow:
            s.close()
    with stderr.open("rb") as f:
        f.seek(before)
        text = f.read()
    return text.count(b"\n"), len(text), health


def main() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = SLOW + 2 * AGENTS + 100
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    state_dir = Path(tempfile.mkdtemp(prefix="wgmesh-bench-slow-", dir=base))
    process = None
    try:
        for d in ("a", "b"):
            (state_dir / d).mkdir()
        agents = seed(state_dir / "a", AGENTS)
        admin, _ = ensure_admin_credential(state_dir / "a")
        port = free_port()
        process = start(state_dir / "a", port, state_dir / "a.stderr")
        x = asyncio.run(attack(port, admin, agents, process.pid))
        end(process)
        seed(state_dir / "b", 2)
        ensure_admin_credential(state_dir / "b")
        port = free_port()
        process = start(state_dir / "b", port, state_dir / "b.stderr", fd_limit=FLOOD_LIMIT)
        lines, size, health = asyncio.run(flood(port, state_dir / "b.stderr"))
        shown = "no answer" if health is None else f"{health * 1000:.0f} ms"
        print(
            f"fd limit {FLOOD_LIMIT}, {FLOOD} half requests: {lines} log lines ({size / 1e6:.2f} MB) in {FLOOD_WINDOW_S:.0f} s; /v1/health then: {shown}"
        )
    finally:
        end(process)
        shutil.rmtree(state_dir, ignore_errors=True)
    ok = x["held"] <= 0 and x["push"] <= max(2 * x["base_push"], 2.0) and lines <= 10
    print(
        f"RESULT slow_clients held_after_15s={int(x['held'])} open_seen_by_client={int(x['kept'])}/{int(x['slow'])} push_under_attack_s={x['push']:.3f} "
        f"push_baseline_s={x['base_push']:.3f} log_lines={lines} {'OK' if ok else 'MISSED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
