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
  the clock starts) against a fresh controller on SQLite and one on PostgreSQL, with the controller's
  CPU time per enrollment (what the load of other processes does not change).

Where a push's time goes, per round: when the enrollment's answer came back from A; when the
database's NOTIFY reached a listener of the bench's own (the wake-up B gets); the first and last
agent on A and on B to hold the new map; the CPU time A, B and the bench's simulated agents spent.
Wall-clock figures come with the load average (the machine is shared), CPU times are per process.

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
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.push import (
    AGENTS,
    POLL_TIMEOUT_S,
    ROUND_DEADLINE_S,
    SETTLE_S,
    AgentConnection,
    Polling,
    SimAgent,
    cpu_seconds,
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
from controller.sqlstore import NOTIFY_CHANNEL, listen_conninfo
from lab.postgres import PostgresCluster
from wire import api

ROUNDS = 3
ENROLLMENTS = 150
ENROLLERS = 8
PREFIX = os.environ.get("WGMESH_BENCH_PREFIX", "wgq")  # of its temporary directories (the cluster's too)


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


class Notices:
    """A LISTEN of the bench's own on the replicas' channel: when each change notification arrived."""

    def __init__(self, url: str) -> None:
        self.times: list[float] = []
        self._stop = threading.Event()
        self._url = url
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        import psycopg

        conninfo, options = listen_conninfo(self._url)
        with psycopg.connect(conninfo, autocommit=True, **options) as conn:
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            self._ready.set()
            while not self._stop.is_set():
                for _n in conn.notifies(timeout=0.2, stop_after=1):
                    self.times.append(time.perf_counter())

    def first_after(self, t: float) -> float:
        return next((x for x in self.times if x >= t), float("nan"))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


ROUND_HEADER = (
    f"{'push':<5} {'round':>5} {'enroll':>7} {'notify':>7} {'A first':>8} {'A all':>7} {'B first':>8} "
    f"{'B all':>7} {'all':>7} {'A CPU':>6} {'B CPU':>6} {'bench CPU':>9}  (s after the enroll was sent)"
)


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
    name: str,
    client: httpx.AsyncClient,
    admin: str,
    agents: list[SimAgent],
    pids: dict[int, int],
    first: int,
    notices: Notices,
) -> list[dict[str, float]]:
    """`pids`: port -> controller pid (A first)."""
    polling = Polling(delta=True)
    tasks = [asyncio.create_task(poll_forever(a, polling)) for a in agents]
    pid_a = next(iter(pids.values()))
    try:
        await push_round("warmup", first, client, admin, agents, tasks, polling, pid_a, show=False)
        figures = []
        for i in range(1, ROUNDS + 1):
            cpu = {port: cpu_seconds(pid) for port, pid in pids.items()}
            x: dict[str, Any] = await push_round(
                name, first + i, client, admin, agents, tasks, polling, pid_a, show=False
            )
            # push_round settles and makes a key first; its figures count from the enroll request.
            started = max(min(a.got.values()) for a in agents) - x["all"]
            x["notify"] = notices.first_after(started) - started
            for side, (port, pid) in zip("AB", pids.items(), strict=False):
                got = [min(a.got.values()) - started for a in agents if a.conn and a.conn.port == port]
                x[f"{side}_first"], x[f"{side}_all"] = min(got), max(got)
                x[f"{side}_cpu"] = cpu_seconds(pid) - cpu[port]
            print(
                f"{name:<5} {first + i:>5} {x['enroll']:>7.3f} {x['notify']:>7.3f} {x['A_first']:>8.3f} "
                f"{x['A_all']:>7.3f} {x.get('B_first', float('nan')):>8.3f} "
                f"{x.get('B_all', float('nan')):>7.3f} {x['all']:>7.3f} {x['A_cpu']:>6.2f} "
                f"{x.get('B_cpu', float('nan')):>6.2f} {x['agents_cpu']:>9.2f}",
                flush=True,
            )
            figures.append(x)
        return figures
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
    start_b: Callable[[], int],
    admin: str,
    agents: list[SimAgent],
    pid_a: int,
    tls: ssl.SSLContext,
    notices: Notices,
) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """(the rounds on A alone, the rounds over A and B)."""
    async with httpx.AsyncClient(
        base_url=f"https://127.0.0.1:{port_a}", timeout=POLL_TIMEOUT_S + 30, verify=tls
    ) as client:
        for a in agents:
            a.conn = AgentConnection(port_a, a.credential, tls)
        await fetch_serials(agents)
        print(f"all {len(agents)} agents on A; {load()}")
        alone = await rounds("1x", client, admin, agents, {port_a: pid_a}, 100, notices)
        pid_b = await asyncio.to_thread(start_b)
        for a in agents[1::2]:
            assert a.conn is not None
            await a.conn.close()
            a.conn = AgentConnection(port_b, a.credential, tls)  # B's certificate, from the same CA
        await fetch_serials(agents)
        print(f"half the agents on B; {load()}")
        spread = await rounds("2x", client, admin, agents, {port_a: pid_a, port_b: pid_b}, 200, notices)
        print(load())
    return alone, spread


async def measure_failover(
    port_a: int,
    port_b: int,
    admin: str,
    agents: list[SimAgent],
    process_a: subprocess.Popen[str],
    pid_b: int,
    tls: ssl.SSLContext,
) -> float:
    """Seconds from SIGKILL of replica A until every agent that polled A holds the next map."""
    on_a = [a for a in agents if a.conn is not None and a.conn.port == port_a]
    await fetch_serials(on_a)
    polling = Polling(delta=True)
    moved: list[float] = []
    cpu_b, cpu_bench = cpu_seconds(pid_b), time.process_time()
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
            enrolled = time.perf_counter() - killed
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
        arrivals = sorted(min(a.got.values()) - killed for a in on_a)
        print(
            f"failover: {len(on_a)} agents moved to B and held the new map {done:.3f} s after the kill "
            f"(the last agent saw A gone at {max(moved) - killed:.3f} s, B answered the enrollment at "
            f"{enrolled:.3f} s, median agent {statistics.median(arrivals):.3f} s; CPU: B "
            f"{cpu_seconds(pid_b) - cpu_b:.2f} s, the bench's agents {time.process_time() - cpu_bench:.2f} s; "
            f"{load()})"
        )
        return done
    finally:
        polling.stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        process_a.wait()


async def enroll_rate(port: int, admin: str, tls: ssl.SSLContext, pid: int) -> tuple[float, float]:
    """(Enrollments per second through the API with ENROLLERS clients at once, each enrollment a
    nonce request and the enroll request signed over it (a fraction of a millisecond of signing);
    the controller's CPU milliseconds per enrollment)."""
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

        start, cpu = time.perf_counter(), cpu_seconds(pid)
        await asyncio.gather(*(worker() for _ in range(ENROLLERS)))
        rate = ENROLLMENTS / (time.perf_counter() - start)
        return rate, (cpu_seconds(pid) - cpu) / ENROLLMENTS * 1000


def main() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * AGENTS:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8 * AGENTS), hard))
    work = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-bench-replicas-"))
    processes: list[subprocess.Popen[str]] = []
    try:
        with PostgresCluster(prefix=f"{PREFIX}-bench-pg-") as pg:
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

            def start_b() -> int:
                t = time.perf_counter()
                processes.append(start_controller(dir_b, port_b, env_for(url)))
                print(f"replica B up in {time.perf_counter() - t:.1f} s", flush=True)
                return processes[-1].pid

            # Replica A made the CA and put it in the database; B serves with a certificate from it.
            tls = ssl.create_default_context(cafile=str(dir_a / "tls" / "ca.crt"))
            print("\n" + ROUND_HEADER)
            notices = Notices(url)
            try:
                alone_rounds, spread_rounds = asyncio.run(
                    measure_push(port_a, port_b, start_b, admin, agents, process_a.pid, tls, notices)
                )
            finally:
                notices.stop()
            alone = statistics.median(r["all"] for r in alone_rounds)
            spread = statistics.median(r["all"] for r in spread_rounds)
            # CPU, which the machine's load does not stretch: the busiest replica's share of a push.
            cpu_alone = statistics.median(r["A_cpu"] for r in alone_rounds)
            cpu_spread = statistics.median(max(r["A_cpu"], r["B_cpu"]) for r in spread_rounds)
            print(
                f"push CPU (median): A alone {cpu_alone:.2f} s; over 2 replicas the busier one "
                f"{cpu_spread:.2f} s ({cpu_spread / cpu_alone:.2f} of alone)"
            )
            failover = asyncio.run(
                measure_failover(port_a, port_b, admin, agents, process_a, processes[-1].pid, tls)
            )
            for a in agents:
                if a.conn is not None:
                    asyncio.run(a.conn.close())
            for p in processes:
                end(p)

            rates: dict[str, float] = {}
            cpu_ms: dict[str, float] = {}
            for kind in ("sqlite", "postgresql"):
                state = work / f"enroll-{kind}"
                state.mkdir(mode=0o700)
                env = env_for(pg.create_database()) if kind == "postgresql" else None
                port = free_port()
                process = start_controller(state, port, env)
                processes.append(process)
                admin_e, _ = ensure_admin_credential(state)
                own = ssl.create_default_context(cafile=str(state / "tls" / "ca.crt"))
                rates[kind], cpu_ms[kind] = asyncio.run(enroll_rate(port, admin_e, own, process.pid))
                end(process)
                print(
                    f"enroll on {kind}: {rates[kind]:.1f} per second ({ENROLLERS} clients at once), "
                    f"controller CPU {cpu_ms[kind]:.1f} ms per enrollment; {load()}"
                )
    finally:
        for p in processes:
            end(p)
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"RESULT replicas agents={AGENTS} push_1x_s={alone:.3f} push_2x_s={spread:.3f} "
        f"ratio_2x_vs_1x={spread / alone:.2f} goal_2x_s=1.0 push_cpu_1x_s={cpu_alone:.2f} "
        f"push_cpu_2x_busier_s={cpu_spread:.2f} cpu_ratio_2x_vs_1x={cpu_spread / cpu_alone:.2f} "
        f"failover_s={failover:.3f} "
        f"enroll_sqlite_per_s={rates['sqlite']:.1f} enroll_pg_per_s={rates['postgresql']:.1f} "
        f"ratio_pg_vs_sqlite={rates['postgresql'] / rates['sqlite']:.2f} "
        f"enroll_cpu_ms_sqlite={cpu_ms['sqlite']:.1f} enroll_cpu_ms_pg={cpu_ms['postgresql']:.1f} "
        f"load1={os.getloadavg()[0]:.1f}"
    )
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
