"""Replica figures: controller processes sharing one PostgreSQL (a private cluster in a temporary
directory, lab.postgres), measured in one run.

- push: 1,000 simulated agents (bench.push's bare HTTP/1.1 pollers, `delta=1`) long-poll; a host
  enrolls through replica A; the time until every agent holds its new map. Baseline: all agents on
  replica A alone; then replica B starts and half the agents poll B. Goal: <= 1 s over 2 replicas.
- failover: the agents on A keep polling; A is killed with SIGKILL and a host enrolls through B at
  once (with the nonce A issued before it died: nonces live in the database); an agent whose
  connection breaks polls B (what the agent's client does with several URLs). The time from the
  kill until every one of them holds the map with the new host.
- enroll: enrollments per second through the API (ENROLLERS clients at once, requests signed before
  the clock starts) against a fresh controller on SQLite and one on PostgreSQL.

Every connection is HTTPS verified against one CA: the one replica A made on first start, which B
takes from the database (one pin for all replicas, as agents have it). Controllers are child
processes ended by their pids; everything lives in temporary directories that
are removed at the end. Prints `RESULT replicas ...` last.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from bench.push import (
    AGENTS,
    HEADER,
    POLL_TIMEOUT_S,
    ROUND_DEADLINE_S,
    SETTLE_S,
    AgentConnection,
    Polling,
    SimAgent,
    enroll_request,
    free_port,
    head_of,
    poll_forever,
    push_round,
    seed,
    serial_of,
    start_controller,
)
from controller.credentials import ensure_admin_credential
from lab.postgres import PostgresCluster
from wire import api

ROUNDS = 3
ENROLLMENTS = 150
ENROLLERS = 8


def env_for(url: str) -> dict[str, str]:
    return {**os.environ, "WGMESH_DB": url}


def end(process: subprocess.Popen[str] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def poll_with_failover(
    agent: SimAgent, polling: Polling, fallback_port: int, moved: list[float], tls: ssl.SSLContext
) -> None:
    """bench.push.poll_forever, moving to `fallback_port` when the replica in use goes away."""
    while not polling.stop.is_set():
        assert agent.conn is not None
        try:
            status, body = await agent.conn.get(
                f"{api.NETMAP}?since={agent.serial}&timeout={POLL_TIMEOUT_S}&delta=1"
            )
        except (OSError, asyncio.IncompleteReadError):
            await agent.conn.close()
            agent.conn = AgentConnection(fallback_port, agent.credential, tls)
            moved.append(time.perf_counter())
            continue
        if status == 200:
            kind, serial, base = head_of(body)
            if kind == "delta" and base != agent.serial:
                agent.serial = 0
                continue
            if polling.marker in body and serial not in agent.got:
                agent.got[serial] = time.perf_counter()
            agent.serial = serial
        elif status != 204:
            raise RuntimeError(f"agent {agent.node_id}: {status} {body[:200]!r}")


async def rounds(
    name: str, client: httpx.AsyncClient, admin: str, agents: list[SimAgent], pid: int, first: int
) -> list[dict[str, float]]:
    polling = Polling(delta=True)
    tasks = [asyncio.create_task(poll_forever(a, polling)) for a in agents]
    try:
        await push_round("warmup", first, client, admin, agents, tasks, polling, pid, show=False)
        return [
            await push_round(name, first + i, client, admin, agents, tasks, polling, pid)
            for i in range(1, ROUNDS + 1)
        ]
    finally:
        polling.stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def fetch_serials(agents: list[SimAgent]) -> None:
    async def one(a: SimAgent) -> None:
        assert a.conn is not None
        status, body = await a.conn.get(api.NETMAP)
        if status != 200:
            raise RuntimeError(f"agent {a.node_id}: {status} {body[:200]!r}")
        a.serial = serial_of(body)

    await asyncio.gather(*(one(a) for a in agents))


async def measure_push(
    port_a: int,
    port_b: int,
    start_b: Callable[[], None],
    admin: str,
    agents: list[SimAgent],
    pid_a: int,
    tls: ssl.SSLContext,
) -> tuple[float, float]:
    """(median all-agents time on A alone, the same over A and B)."""
    async with httpx.AsyncClient(
        base_url=f"https://127.0.0.1:{port_a}", timeout=POLL_TIMEOUT_S + 30, verify=tls
    ) as client:
        for a in agents:
            a.conn = AgentConnection(port_a, a.credential, tls)
        await fetch_serials(agents)
        alone = await rounds("1x", client, admin, agents, pid_a, 100)
        await asyncio.to_thread(start_b)
        for a in agents[1::2]:
            assert a.conn is not None
            await a.conn.close()
            a.conn = AgentConnection(port_b, a.credential, tls)  # B's certificate, from the same CA
        await fetch_serials(agents)
        spread = await rounds("2x", client, admin, agents, pid_a, 200)
    return statistics.median(r["all"] for r in alone), statistics.median(r["all"] for r in spread)


async def measure_failover(
    port_a: int,
    port_b: int,
    admin: str,
    agents: list[SimAgent],
    process_a: subprocess.Popen[str],
    tls: ssl.SSLContext,
) -> float:
    """Seconds from SIGKILL of replica A until every agent that polled A holds the next map."""
    on_a = [a for a in agents if a.conn is not None and a.conn.port == port_a]
    await fetch_serials(on_a)
    polling = Polling(delta=True)
    moved: list[float] = []
    tasks = [asyncio.create_task(poll_with_failover(a, polling, port_b, moved, tls)) for a in on_a]
    try:
        await asyncio.sleep(SETTLE_S)
        async with httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{port_b}", timeout=30, verify=tls
        ) as client:
            headers = {"Authorization": f"Bearer {admin}"}
            r = await client.post(api.PREAUTH_KEYS, json={}, headers=headers)
            r.raise_for_status()
            async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{port_a}", verify=tls) as on_a_client:
                nonce = (await on_a_client.post(api.ENROLL_NONCE)).raise_for_status().json()["nonce"]
            request, wg_key = enroll_request(r.json()["key"], nonce, 250)
            polling.marker = wg_key.encode()
            for a in on_a:
                a.got.clear()
            killed = time.perf_counter()
            os.kill(process_a.pid, signal.SIGKILL)
            r = await client.post(
                api.ENROLL, content=request.model_dump_json(), headers={"Content-Type": "application/json"}
            )
            r.raise_for_status()
        deadline = killed + ROUND_DEADLINE_S
        while sum(1 for a in on_a if a.got) < len(on_a):
            for t in tasks:
                if t.done() and t.exception():
                    raise t.exception()  # type: ignore[misc]
            if time.perf_counter() > deadline:
                raise RuntimeError(
                    f"failover: only {sum(1 for a in on_a if a.got)} of {len(on_a)} got the map"
                )
            await asyncio.sleep(0.005)
        done = max(min(a.got.values()) for a in on_a) - killed
        print(f"failover: {len(on_a)} agents moved to B and held the new map {done:.3f} s after the kill")
        return done
    finally:
        polling.stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        process_a.wait()


async def enroll_rate(port: int, admin: str, tls: ssl.SSLContext) -> float:
    """Enrollments per second through the API with ENROLLERS clients at once, each enrollment a
    nonce request and the enroll request signed over it (a fraction of a millisecond of signing)."""
    async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{port}", timeout=60, verify=tls) as client:
        r = await client.post(
            api.PREAUTH_KEYS, json={"reusable": True}, headers={"Authorization": f"Bearer {admin}"}
        )
        r.raise_for_status()
        key = r.json()["key"]
        queue = list(range(ENROLLMENTS))

        async def worker() -> None:
            while queue:
                i = queue.pop()
                nonce = (await client.post(api.ENROLL_NONCE)).raise_for_status().json()["nonce"]
                body = enroll_request(key, nonce, i)[0].model_dump_json()
                r = await client.post(api.ENROLL, content=body, headers={"Content-Type": "application/json"})
                r.raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(ENROLLERS)))
        return ENROLLMENTS / (time.perf_counter() - start)


def main() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * AGENTS:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8 * AGENTS), hard))
    work = Path(tempfile.mkdtemp(prefix="wgq-bench-replicas-"))
    processes: list[subprocess.Popen[str]] = []
    try:
        with PostgresCluster(prefix="wgq-bench-pg-") as pg:
            url = pg.create_database()
            dir_a, dir_b = work / "a", work / "b"
            dir_a.mkdir(mode=0o700)
            t = time.perf_counter()
            agents = seed(dir_a, AGENTS, url)
            admin, _ = ensure_admin_credential(dir_a)
            dir_b.mkdir(mode=0o700)
            shutil.copy2(dir_a / "admin-credential", dir_b / "admin-credential")
            port_a, port_b = free_port(), free_port()
            process_a = start_controller(dir_a, port_a, env_for(url))
            processes.append(process_a)
            print(f"{AGENTS} nodes seeded into PostgreSQL, replica A up in {time.perf_counter() - t:.1f} s")

            def start_b() -> None:
                t = time.perf_counter()
                processes.append(start_controller(dir_b, port_b, env_for(url)))
                print(f"replica B up in {time.perf_counter() - t:.1f} s", flush=True)

            # Replica A made the CA and put it in the database; B serves with a certificate from it.
            tls = ssl.create_default_context(cafile=str(dir_a / "tls" / "ca.crt"))
            print("\n" + HEADER)
            alone, spread = asyncio.run(
                measure_push(port_a, port_b, start_b, admin, agents, process_a.pid, tls)
            )
            failover = asyncio.run(measure_failover(port_a, port_b, admin, agents, process_a, tls))
            for a in agents:
                if a.conn is not None:
                    asyncio.run(a.conn.close())
            for p in processes:
                end(p)

            rates = {}
            for kind in ("sqlite", "postgresql"):
                state = work / f"enroll-{kind}"
                state.mkdir(mode=0o700)
                env = env_for(pg.create_database()) if kind == "postgresql" else None
                port = free_port()
                process = start_controller(state, port, env)
                processes.append(process)
                admin_e, _ = ensure_admin_credential(state)
                own = ssl.create_default_context(cafile=str(state / "tls" / "ca.crt"))
                rates[kind] = asyncio.run(enroll_rate(port, admin_e, own))
                end(process)
                print(f"enroll on {kind}: {rates[kind]:.1f} per second ({ENROLLERS} clients at once)")
    finally:
        for p in processes:
            end(p)
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"RESULT replicas agents={AGENTS} push_1x_s={alone:.3f} push_2x_s={spread:.3f} "
        f"ratio_2x_vs_1x={spread / alone:.2f} goal_2x_s=1.0 failover_s={failover:.3f} "
        f"enroll_sqlite_per_s={rates['sqlite']:.1f} enroll_pg_per_s={rates['postgresql']:.1f} "
        f"ratio_pg_vs_sqlite={rates['postgresql'] / rates['sqlite']:.2f}"
    )
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
