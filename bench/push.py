"""Push figures: 1,000 simulated agents long-poll one real controller process (uvicorn on 127.0.0.1,
full-mesh policy); a new host enrolls; how long until every agent holds its new map (the bytes of a
map with the new serial naming the new host's key).

Baseline, measured in the same run: the same 1,000 agents fetching their current map all at once with
no long-poll (`since=0`), i.e. the floor any push of 1,000 full maps can reach on this machine.

The 1,000 nodes are written into the store before the controller starts (enrolling them one by one
over HTTP would only measure enrollment); the measured enrollments go through the real API. The
controller is a child process ended by its pid; its state lives in a temporary directory removed at
the end. Goal: <= 1 s for all 1,000.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpcore
import httpx

from controller.credentials import NODE_PREFIX, credential_hash, ensure_admin_credential, new_secret
from controller.sqlstore import SqlStore
from controller.store import NodeWrite
from keys import IdentityPrivateKey, WireGuardPrivateKey
from wire import api
from wire.models import EnrollRequest, enroll_signing_bytes

AGENTS = 1000
ROUNDS = 5
MESH = ipaddress.ip_network("198.19.0.0/16")
POLL_TIMEOUT_S = 60
ROUND_DEADLINE_S = 60.0
START_DEADLINE_S = 120.0


@dataclass
class SimAgent:
    node_id: int
    credential: str
    serial: int = 0
    got: dict[int, float] = field(default_factory=dict)  # serial -> time it arrived
    client: httpx.AsyncClient | None = None  # each agent its own connection, as on its own host


def lighten_simulated_agents() -> None:
    """1,000 agents share one core of this machine; real agents each have a host. Two costs of httpx
    that only the simulation feels are taken out, so the figures measure the controller:
    - httpcore asks `import sniffio` on every request; where sniffio is not installed each failed
      import walks sys.path (about 0.5 ms a request);
    - httpcore reads a response 64 KiB at a time, and the Python work per read is most of what the
      agents spend on a ~380 KB map; they read 1 MiB at a time instead.
    """
    if "sniffio" not in sys.modules:
        try:
            import sniffio  # noqa: F401
        except ImportError:
            sys.modules["sniffio"] = None  # type: ignore[assignment]
    httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed(state_dir: Path, n: int) -> list[SimAgent]:
    """Write n nodes with their credentials straight into the store."""
    store = SqlStore(f"sqlite:///{state_dir / 'controller.db'}")
    now = datetime.now(UTC)
    store.create_preauth_key(credential_hash("bench-seed"), "node", True, now, None)
    agents = []
    for i in range(1, n + 1):
        credential = new_secret(NODE_PREFIX)
        record = store.enroll(
            credential_hash("bench-seed"),
            NodeWrite(
                node_id=None,
                name=f"sim-{i}",
                hostname=f"sim-{i}",
                wg_public_key=WireGuardPrivateKey.generate().public_key().base64(),
                identity_public_key=IdentityPrivateKey.generate().public_key().base64(),
                tunnel_address=MESH[i],
                endpoints=(f"198.18.{i // 250}.{i % 250 + 1}:51820",),
                listen_port=51820,
                credential_hash=credential_hash(credential),
            ),
            now,
        )
        agents.append(SimAgent(record.node_id, credential))
    store.close()
    return agents


def start_controller(state_dir: Path, port: int) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        "-c",
        "import sys; from wgmesh.cli import main; sys.exit(main())",
        "controller",
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--state-dir",
        str(state_dir),
        "--mesh-cidr",
        str(MESH),
    ]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if "ready" in line:
            return process
    process.kill()
    raise RuntimeError(f"controller did not start: {process.stderr.read() if process.stderr else ''}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serial_of(body: bytes) -> int:
    """The serial of a rendered map: its first field."""
    head = body[: body.index(b",")]
    return int(head.split(b":")[1])


async def poll_forever(agent: SimAgent, stop: asyncio.Event, marker: list[bytes]) -> None:
    headers = {"Authorization": f"Bearer {agent.credential}"}
    assert agent.client is not None
    failures = 0
    while not stop.is_set():
        try:
            r = await agent.client.get(
                api.NETMAP, params={"since": agent.serial, "timeout": POLL_TIMEOUT_S}, headers=headers
            )
        except httpx.TransportError:
            failures += 1  # a dropped connection: an agent reconnects, as the real one does
            if stop.is_set() or failures > 3:
                raise
            continue
        if r.status_code == 200:
            body = r.content
            serial = serial_of(body)
            # "Holds the new map": the new serial, with the newest host in it.
            if not marker or marker[-1] in body:
                agent.got.setdefault(serial, time.perf_counter())
            agent.serial = serial
        elif r.status_code != 204:
            raise RuntimeError(f"agent {agent.node_id}: {r.status_code} {r.text}")


async def fetch_all(agents: list[SimAgent]) -> float:
    async def one(agent: SimAgent) -> None:
        assert agent.client is not None
        r = await agent.client.get(api.NETMAP, headers={"Authorization": f"Bearer {agent.credential}"})
        r.raise_for_status()
        agent.serial = serial_of(r.content)

    start = time.perf_counter()
    await asyncio.gather(*(one(a) for a in agents))
    return time.perf_counter() - start


def enroll_request(key: str, i: int) -> tuple[EnrollRequest, str]:
    identity = IdentityPrivateKey.generate()
    wg = WireGuardPrivateKey.generate().public_key()
    unsigned = EnrollRequest(
        preauth_key=key,
        hostname=f"newcomer-{i}",
        wg_public_key=wg,
        identity_public_key=identity.public_key(),
        endpoints=[f"198.18.200.{i}:51820"],
        signature="-",
    )
    signature = base64.b64encode(identity.sign(enroll_signing_bytes(unsigned))).decode()
    return unsigned.model_copy(update={"signature": signature}), wg.base64()


async def run(
    url: str, admin: str, agents: list[SimAgent], controller_pid: int
) -> tuple[float, list[dict[str, float]]]:
    timeout = httpx.Timeout(POLL_TIMEOUT_S + 30)
    for a in agents:
        a.client = httpx.AsyncClient(base_url=url, timeout=timeout)
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as client:
        await fetch_all(agents)  # connections up
        baseline = min([await fetch_all(agents) for _ in range(2)])
        stop = asyncio.Event()
        marker: list[bytes] = []
        tasks = [asyncio.create_task(poll_forever(a, stop, marker)) for a in agents]
        admin_headers = {"Authorization": f"Bearer {admin}"}
        rounds = []
        try:
            for i in range(1, ROUNDS + 1):
                r = await client.post(api.PREAUTH_KEYS, json={}, headers=admin_headers)
                r.raise_for_status()
                request, wg_key = enroll_request(r.json()["key"], i)
                marker.append(wg_key.encode())
                for a in agents:
                    a.got.clear()
                body = request.model_dump_json()
                server_cpu, agents_cpu = cpu_seconds(controller_pid), time.process_time()
                start = time.perf_counter()
                r = await client.post(api.ENROLL, content=body, headers={"Content-Type": "application/json"})
                enrolled = time.perf_counter()
                r.raise_for_status()
                deadline = start + ROUND_DEADLINE_S
                while sum(1 for a in agents if a.got) < len(agents):
                    for t in tasks:
                        if t.done() and t.exception():
                            raise t.exception()  # type: ignore[misc]
                    if time.perf_counter() > deadline:
                        raise RuntimeError(
                            f"round {i}: only {sum(1 for a in agents if a.got)} agents got the map"
                        )
                    await asyncio.sleep(0.005)
                arrivals = sorted(min(a.got.values()) - start for a in agents)
                rounds.append(
                    {
                        "server_cpu": cpu_seconds(controller_pid) - server_cpu,
                        "agents_cpu": time.process_time() - agents_cpu,
                        "enroll": enrolled - start,
                        "first": arrivals[0],
                        "p50": statistics.median(arrivals),
                        "p99": arrivals[int(0.99 * (len(arrivals) - 1))],
                        "all": arrivals[-1],
                    }
                )
                r = rounds[-1]
                print(
                    f"{i:>5} {r['enroll']:>9.3f} {r['first']:>8.3f} {r['p50']:>7.3f} {r['p99']:>7.3f} "
                    f"{r['all']:>7.3f} {r['server_cpu']:>11.2f} {r['agents_cpu']:>11.2f}",
                    flush=True,
                )
        finally:
            stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for a in agents:
                if a.client is not None:
                    await a.client.aclose()
        return baseline, rounds


def main() -> int:
    lighten_simulated_agents()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * AGENTS:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8 * AGENTS), hard))
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    state_dir = Path(tempfile.mkdtemp(prefix="wgmesh-bench-push-", dir=base))
    process: subprocess.Popen[str] | None = None
    try:
        t = time.perf_counter()
        agents = seed(state_dir, AGENTS)
        admin, _ = ensure_admin_credential(state_dir)
        seeded = time.perf_counter() - t
        port = free_port()
        t = time.perf_counter()
        process = start_controller(state_dir, port)
        started = time.perf_counter() - t
        print(f"{AGENTS} nodes seeded in {seeded:.1f} s; controller (full mesh) started in {started:.1f} s")
        print(
            f"\n{'round':>5} {'enroll s':>9} {'first s':>8} {'p50 s':>7} {'p99 s':>7} {'all s':>7} "
            f"{'server CPU s':>11} {'agents CPU s':>11}"
        )
        baseline, rounds = asyncio.run(run(f"http://127.0.0.1:{port}", admin, agents, process.pid))
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(state_dir, ignore_errors=True)
    push = statistics.median(r["all"] for r in rounds)
    worst = max(r["all"] for r in rounds)
    server_cpu = statistics.median(r["server_cpu"] for r in rounds)
    agents_cpu = statistics.median(r["agents_cpu"] for r in rounds)
    print(f"\nbaseline: {AGENTS} agents fetch their current map at once (no long-poll): {baseline:.3f} s")
    print(
        f"push: all {AGENTS} agents hold the new map {push:.3f} s after the enrollment started (median of {ROUNDS})"
    )
    print(
        f"CPU per push (median): controller {server_cpu:.2f} s, the {AGENTS} simulated agents {agents_cpu:.2f} s "
        f"on {os.cpu_count()} cores; whichever is larger bounds the figure"
    )
    print(
        f"RESULT name=push agents={AGENTS} push_all_s={push:.3f} push_all_worst_s={worst:.3f} "
        f"push_p50_s={statistics.median(r['p50'] for r in rounds):.3f} fetch_all_baseline_s={baseline:.3f} "
        f"push_over_fetch={push / baseline:.2f} enroll_s={statistics.median(r['enroll'] for r in rounds):.3f} "
        f"controller_cpu_s={server_cpu:.2f} agents_cpu_s={agents_cpu:.2f} goal_met={'yes' if push <= 1.0 else 'no'}"
    )
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
