"""Push figures: 1,000 simulated agents long-poll one real controller process (uvicorn on 127.0.0.1,
full-mesh policy); a new host enrolls; how long until every agent holds its new map.

Three rows, measured in the same run against the same controller:
- baseline: the 1,000 agents fetch their current full map all at once with no long-poll (`since=0`),
  the floor any push of 1,000 full maps can reach on this machine;
- full push: agents long-poll without `delta=1` (protocol 1 before deltas): every agent gets its whole
  ~380 KB map; it holds the new map when the answer has the new serial and names the new host's key;
- delta push: agents long-poll with `delta=1`: every agent gets a NetMapDelta against the serial it
  holds; it holds the new map when the delta's base_serial is its serial and the delta names the new
  host's key. A few agents (VERIFIED) also keep the parsed map, apply every delta with
  `wire.delta.apply_delta` and compare it with a full fetch at the end.

The 1,000 nodes are written into the store before the controller starts (enrolling them one by one
over HTTP would only measure enrollment); the measured enrollments go through the real API. The
controller is a child process ended by its pid; its state lives in a temporary directory removed at
the end. Goal: the delta push reaches all 1,000 agents in <= 1 s.

Then the access policy (issue #17): a policy tags 10 nodes supervisor, 10 client, the rest worker
(workers and clients reach the supervisors); one unmeasured round puts it in force (every map shrinks),
then each measured round toggles a rule letting clients reach supervisors' port 8000 with a tcp rule
of its own. Only the 20 supervisors and clients are affected: the round measures how long until each
of them holds its new map, and counts the maps any other agent received (goal: none).

Scale (issue #18): `--agents N` runs everything at N agents (above FULL_ROUNDS_UP_TO agents one full-map
round only: each full map is N peers); after the delta rounds a removal round (the admin removes a
host that enrolled; agents hold the new map when their delta removes it), then the controller's
resident memory, then enrollments per second with nobody polling (ENROLLMENTS, one after another:
what one join costs the controller at this size; also as its CPU per enrollment, which a loaded
machine does not blur; every round prints the load average). `--sizes 100,1000,2000,5000` runs one
process per size and prints the figures side by side with their ratios to the first size: controller CPU per
change (goal: growing linearly, so CPU per change and agent stays flat) and the enrollment rate
(goal: at the largest size within 2x of the smallest).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ipaddress
import os
import re
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
from pydantic import TypeAdapter

from controller.credentials import NODE_PREFIX, credential_hash, ensure_admin_credential, new_secret
from controller.sqlstore import SqlStore
from controller.store import NodeWrite
from keys import IdentityPrivateKey, WireGuardPrivateKey
from wire import api
from wire.delta import apply_delta
from wire.models import EnrollRequest, NetMap, NetMapDelta, NetMapUpdate, enroll_signing_bytes
from wire.preauth import parse_preauth_key

AGENTS = 1000
ROUNDS = 5
FULL_ROUNDS_UP_TO = 2000  # more agents: one full-map round (each full map then carries N peers)
ENROLLMENTS = 30
STORM_UP_TO = 2000  # more agents: no "all fetch at once" baseline (the controller would hold n^2 bytes)
STORM_BATCH = 100
VERIFIED = 10  # agents that also apply every delta to a parsed map and check it against a full fetch
MESH = ipaddress.ip_network("198.19.0.0/16")
POLL_TIMEOUT_S = 60
ROUND_DEADLINE_S = 60.0  # per 1,000 agents (at least)
SETTLE_S = 1.0
START_DEADLINE_S = 120.0


@dataclass
class SimAgent:
    node_id: int
    credential: str
    serial: int = 0
    got: dict[int, float] = field(default_factory=dict)  # serial -> time it arrived
    got_bytes: int = 0  # size of the answer that brought the new map
    conn: AgentConnection | None = None  # each agent its own connection, as on its own host
    held: NetMap | None = None  # VERIFIED agents only: the map, with every delta applied
    mismatches: int = 0  # deltas whose base_serial was not the serial held


class AgentConnection:
    """One simulated agent's keep-alive HTTP/1.1 connection to the controller: GET with the node's
    bearer credential, answers with a Content-Length body (all uvicorn sends for these routes).

    1,000 agents share one core of this machine with the controller; real agents each have a host.
    httpx costs an agent about a millisecond of Python per request, which would make the simulated
    agents, not the controller, the bottleneck; this speaks the bare protocol instead. The controller
    sees ordinary requests on ordinary connections, one per agent."""

    def __init__(self, port: int, credential: str, tls: ssl.SSLContext) -> None:
        self.port = port
        self.tls = tls
        self._head = b"host: 127.0.0.1:%d\r\nauthorization: Bearer %s\r\n\r\n" % (port, credential.encode())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def get(self, target: str) -> tuple[int, bytes]:
        """(status, body); reconnects once when the controller closed an idle connection."""
        for attempt in (1, 2):
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(
                    "127.0.0.1", self.port, ssl=self.tls
                )
            assert self._reader is not None
            try:
                self._writer.write(b"GET " + target.encode() + b" HTTP/1.1\r\n" + self._head)
                head = await self._reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await self._reader.readexactly(length) if length else b""
                return int(head[9:12]), body
            except (asyncio.IncompleteReadError, ConnectionError):
                await self.close()
                if attempt == 2:
                    raise
            except asyncio.CancelledError:
                # a request cut off midway leaves its answer on the connection: never reuse it
                self._writer.close()
                self._reader = self._writer = None
                raise
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed(state_dir: Path, n: int, db_url: str | None = None) -> list[SimAgent]:
    """Write n nodes with their credentials straight into the store (default: SQLite in state_dir)."""
    store = SqlStore(db_url or f"sqlite:///{state_dir / 'controller.db'}")
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


def start_controller(
    state_dir: Path, port: int, env: dict[str, str] | None = None, args: Sequence[str] = ()
) -> subprocess.Popen[str]:
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
        *args,
    ]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return ready(process, lambda: process.stderr.read() if process.stderr else "")


def ready(process: subprocess.Popen[str], stderr: Callable[[], str]) -> subprocess.Popen[str]:
    """`process` once it printed its ready line; killed, with `stderr()` in the error, when it does not."""
    assert process.stdout is not None
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if "ready" in line:
            return process
    process.kill()
    raise RuntimeError(f"controller did not start: {stderr()}")


def deadline_s(agents: int) -> float:
    """How long a round may take before the bench gives up: longer for more agents."""
    return ROUND_DEADLINE_S * max(1.0, agents / 1000)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_HEAD = re.compile(rb'^\{(?:"kind":"(full|delta)",)?"serial":(\d+),(?:"base_serial":(\d+),)?')
_UPDATE: TypeAdapter[NetMap | NetMapDelta] = TypeAdapter(NetMapUpdate)


def head_of(body: bytes) -> tuple[str, int, int | None]:
    """(kind, serial, base_serial) of a rendered map or delta: its first fields."""
    m = _HEAD.match(body[:120])
    if m is None:
        raise RuntimeError(f"not a map: {body[:120]!r}")
    return (m[1] or b"full").decode(), int(m[2]), int(m[3]) if m[3] else None


def serial_of(body: bytes) -> int:
    return head_of(body)[1]


async def poll_forever(agent: SimAgent, polling: Polling) -> None:
    assert agent.conn is not None
    while not polling.stop.is_set():
        flag = "&delta=1" if polling.delta else ""
        status, body = await agent.conn.get(
            f"{api.NETMAP}?since={agent.serial}&timeout={POLL_TIMEOUT_S}{flag}"
        )
        if status == 200:
            kind, serial, base = head_of(body)
            if kind == "delta" and (
                base != agent.serial or (agent.held is None and agent.node_id <= VERIFIED)
            ):
                agent.mismatches += 1  # not a delta to the map held: ask for the full map
                agent.serial, agent.held = 0, None
                continue
            if agent.held is not None or (polling.delta and agent.node_id <= VERIFIED):
                answer = _UPDATE.validate_json(body)
                if isinstance(answer, NetMapDelta):
                    assert agent.held is not None
                    agent.held = apply_delta(agent.held, answer)
                else:
                    agent.held = answer
            # "Holds the new map": the new serial, with the newest host in it.
            if polling.marker in body and serial not in agent.got:
                agent.got[serial] = time.perf_counter()
                agent.got_bytes = len(body)
            agent.serial = serial
        elif status != 204:
            raise RuntimeError(f"agent {agent.node_id}: {status} {body[:200]!r}")


async def full_map(agent: SimAgent) -> bytes:
    assert agent.conn is not None
    status, body = await agent.conn.get(api.NETMAP)
    if status != 200:
        raise RuntimeError(f"agent {agent.node_id}: {status} {body[:200]!r}")
    return body


async def fetch_all(agents: list[SimAgent], at_once: int | None = None) -> float:
    """Every agent fetches its full map (`at_once`: at most that many at a time; None: all at once)."""
    slots = asyncio.Semaphore(at_once or len(agents) or 1)

    async def one(agent: SimAgent) -> None:
        async with slots:
            body = await full_map(agent)
        agent.serial = serial_of(body)
        if agent.node_id <= VERIFIED:
            agent.held = NetMap.model_validate_json(body)

    start = time.perf_counter()
    await asyncio.gather(*(one(a) for a in agents))
    return time.perf_counter() - start


def enroll_request(key: str, nonce: str, i: int) -> tuple[EnrollRequest, str]:
    identity = IdentityPrivateKey.generate()
    wg = WireGuardPrivateKey.generate().public_key()
    unsigned = EnrollRequest(
        preauth_key=parse_preauth_key(key).secret,
        nonce=nonce,
        hostname=f"newcomer-{i}",
        wg_public_key=wg,
        identity_public_key=identity.public_key(),
        endpoints=[f"198.18.200.{i}:51820"],
        signature="-",
    )
    signature = base64.b64encode(identity.sign(enroll_signing_bytes(unsigned))).decode()
    return unsigned.model_copy(update={"signature": signature}), wg.base64()


HEADER = (
    f"{'push':<6} {'round':>5} {'enroll s':>9} {'first s':>8} {'p50 s':>7} {'p99 s':>7} {'all s':>7} "
    f"{'KB/agent':>9} {'server CPU s':>12} {'agents CPU s':>12} {'load1':>6} {'RSS MB':>7}"
)


@dataclass
class Polling:
    """The agents' long-poll loops: whether they ask for deltas, and the newest host's key (an answer
    naming it brings the new map)."""

    delta: bool = False
    marker: bytes = b""
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def push_round(
    name: str,
    number: int,
    client: httpx.AsyncClient,
    admin: str,
    agents: list[SimAgent],
    tasks: list[asyncio.Task[None]],
    polling: Polling,
    controller_pid: int,
    show: bool = True,
) -> dict[str, float]:
    """One enrollment while every agent long-polls; figures of how it reached them."""
    # A push into idle long-polls: every agent's poll is parked before the enrollment.
    await asyncio.sleep(SETTLE_S)
    admin_headers = {"Authorization": f"Bearer {admin}"}
    r = await client.post(api.PREAUTH_KEYS, json={}, headers=admin_headers)
    r.raise_for_status()
    key = r.json()["key"]
    r = await client.post(api.ENROLL_NONCE)
    r.raise_for_status()
    request, wg_key = enroll_request(key, r.json()["nonce"], number)
    body = request.model_dump_json()

    async def enroll() -> None:
        r = await client.post(api.ENROLL, content=body, headers={"Content-Type": "application/json"})
        r.raise_for_status()

    return await measured_change(
        name, number, agents, tasks, polling, wg_key.encode(), controller_pid, enroll, show
    )


async def measured_change(
    name: str,
    number: int,
    agents: list[SimAgent],
    tasks: list[asyncio.Task[None]],
    polling: Polling,
    marker: bytes,
    controller_pid: int,
    change: Callable[[], Awaitable[None]],
    show: bool = True,
) -> dict[str, float]:
    """Make one change while every agent long-polls; figures of how it reached them (an agent holds
    the new map when an answer names `marker`)."""
    polling.marker = marker
    for a in agents:
        a.got.clear()
    server_cpu, agents_cpu = cpu_seconds(controller_pid), time.process_time()
    start = time.perf_counter()
    await change()
    answered = time.perf_counter()
    deadline = start + deadline_s(len(agents))
    while sum(1 for a in agents if a.got) < len(agents):
        for t in tasks:
            if t.done() and t.exception():
                raise t.exception()  # type: ignore[misc]
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{name} {number}: only {sum(1 for a in agents if a.got)} agents got the map")
        await asyncio.sleep(0.005)
    arrivals = sorted(min(a.got.values()) - start for a in agents)
    x = {
        "server_cpu": cpu_seconds(controller_pid) - server_cpu,
        "agents_cpu": time.process_time() - agents_cpu,
        "enroll": answered - start,
        "first": arrivals[0],
        "p50": statistics.median(arrivals),
        "p99": arrivals[int(0.99 * (len(arrivals) - 1))],
        "all": arrivals[-1],
        "kb": statistics.mean(a.got_bytes for a in agents) / 1024,
        "load": os.getloadavg()[0],
        "rss": resident_mb(controller_pid)[0],  # the controller's, after the round
    }
    if show:
        print(
            f"{name:<6} {number:>5} {x['enroll']:>9.3f} {x['first']:>8.3f} {x['p50']:>7.3f} {x['p99']:>7.3f} "
            f"{x['all']:>7.3f} {x['kb']:>9.1f} {x['server_cpu']:>12.2f} {x['agents_cpu']:>12.2f} "
            f"{x['load']:>6.1f} {x['rss']:>7.0f}",
            flush=True,
        )
    return x


async def verify(agents: list[SimAgent]) -> tuple[int, int]:
    """(VERIFIED agents whose delta-built map equals a full fetch, how many were checked)."""
    ok = checked = 0
    for a in agents:
        if a.held is None:
            continue
        checked += 1
        ok += NetMap.model_validate_json(await full_map(a)) == a.held
    return ok, checked


SUPERVISORS = range(1, 11)


def clients(n: int) -> range:
    return range(n - 9, n + 1)


def policy_text(with_api: bool, n: int = AGENTS) -> str:
    tags = "\n".join(f'sim-{i} = ["supervisor"]' for i in SUPERVISORS)
    tags += "\n" + "\n".join(f'sim-{i} = ["client"]' for i in clients(n))
    text = (
        f'relays = ["tag:supervisor"]\n[tags]\n{tags}\n'
        '[[rules]]\nname = "work"\nfrom = ["tag:worker", "tag:client"]\nto = ["tag:supervisor"]\n'
        'ports = ["tcp/9000"]\n[[rules]]\nname = "everyone-else"\nfrom = ["*"]\nto = ["tag:supervisor"]\n'
        'ports = ["icmp"]\n'
    )
    if with_api:
        text += (
            '[[rules]]\nname = "api"\nfrom = ["tag:client"]\nto = ["tag:supervisor"]\nports = ["tcp/8000"]\n'
        )
    return text


async def policy_round(
    number: int,
    client: httpx.AsyncClient,
    admin: str,
    agents: list[SimAgent],
    tasks: list[asyncio.Task[None]],
    polling: Polling,
    controller_pid: int,
    affected: set[int] | None,
    show: bool = True,
) -> dict[str, float]:
    """One policy change while every agent long-polls: how long until every affected agent (None:
    every agent) holds a new map, and how many others got one."""
    await asyncio.sleep(SETTLE_S)
    polling.marker = b""  # any new map counts
    for a in agents:
        a.got.clear()
    want = {a.node_id for a in agents} if affected is None else affected
    server_cpu, agents_cpu = cpu_seconds(controller_pid), time.process_time()
    start = time.perf_counter()
    r = await client.put(
        api.POLICY,
        json={"text": policy_text(number % 2 == 0, len(agents)), "author": "bench"},
        headers={"Authorization": f"Bearer {admin}"},
    )
    answered = time.perf_counter()
    r.raise_for_status()
    # The unmeasured round that puts the policy in force changes every map: on a loaded machine it may
    # take as long as several full fetches of every map.
    deadline = start + deadline_s(len(agents)) * (4 if affected is None else 1)
    while sum(1 for a in agents if a.got and a.node_id in want) < len(want):
        for t in tasks:
            if t.done() and t.exception():
                raise t.exception()  # type: ignore[misc]
        if time.perf_counter() > deadline:
            raise RuntimeError(f"policy round {number}: not every affected agent got a map")
        await asyncio.sleep(0.005)
    # CPU until the last affected agent held its map: compared with the wall time, it says whether
    # anything waited (a tick, a debounce) or the machine was busy (load average).
    cpu_held, agents_held = cpu_seconds(controller_pid) - server_cpu, time.process_time() - agents_cpu
    await asyncio.sleep(SETTLE_S)  # anything else would have arrived by now
    arrivals = sorted(min(a.got.values()) - start for a in agents if a.node_id in want)
    x = {
        "put": answered - start,
        "p50": statistics.median(arrivals),
        "all": arrivals[-1],
        "others": float(sum(1 for a in agents if a.got and a.node_id not in want)),
        "server_cpu": cpu_held,
        "agents_cpu": agents_held,
        "load": os.getloadavg()[0],
        "rss": resident_mb(controller_pid)[0],  # the controller's, after the round
    }
    if show:
        print(
            f"{'policy':<6} {number:>5} {x['put']:>9.3f} {'':>8} {x['p50']:>7.3f} {'':>7} {x['all']:>7.3f} "
            f"{'':>9} {x['server_cpu']:>12.2f} {x['agents_cpu']:>12.2f} {x['load']:>6.1f} {x['rss']:>7.0f}   affected "
            f"{len(want)}, other agents with a new map: {int(x['others'])}",
            flush=True,
        )
    return x


async def remove_round(
    number: int,
    client: httpx.AsyncClient,
    admin: str,
    node_id: int,
    agents: list[SimAgent],
    tasks: list[asyncio.Task[None]],
    polling: Polling,
    controller_pid: int,
) -> dict[str, float]:
    """The admin removes node `node_id` while every agent long-polls (with deltas): how long until
    every agent holds a map without it (its delta removes it)."""
    await asyncio.sleep(SETTLE_S)

    async def remove() -> None:
        r = await client.delete(f"{api.NODES}/{node_id}", headers={"Authorization": f"Bearer {admin}"})
        r.raise_for_status()

    marker = b'"peers_removed":[%d]' % node_id
    return await measured_change("remove", number, agents, tasks, polling, marker, controller_pid, remove)


async def enroll_rate(
    client: httpx.AsyncClient, admin: str, count: int, controller_pid: int
) -> tuple[float, float]:
    """(enrollments per second, one after another (requests signed before the clock starts), the
    controller's CPU milliseconds per enrollment: the figure a loaded machine does not blur)."""
    r = await client.post(
        api.PREAUTH_KEYS, json={"reusable": True}, headers={"Authorization": f"Bearer {admin}"}
    )
    r.raise_for_status()
    key = r.json()["key"]
    nonces = []
    for _ in range(count):
        r = await client.post(api.ENROLL_NONCE)
        r.raise_for_status()
        nonces.append(r.json()["nonce"])
    bodies = [enroll_request(key, nonce, 100 + i)[0].model_dump_json() for i, nonce in enumerate(nonces)]
    cpu = cpu_seconds(controller_pid)
    start = time.perf_counter()
    for body in bodies:
        r = await client.post(api.ENROLL, content=body, headers={"Content-Type": "application/json"})
        r.raise_for_status()
    return count / (time.perf_counter() - start), (cpu_seconds(controller_pid) - cpu) / count * 1000


def resident_mb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) memory of a process in MB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


@dataclass
class Figures:
    baseline: float
    full: list[dict[str, float]]
    delta: list[dict[str, float]]
    verified: tuple[int, int]
    mismatches: int
    policy: list[dict[str, float]] = field(default_factory=list)
    removal: list[dict[str, float]] = field(default_factory=list)
    rss_mb: float = 0.0
    peak_rss_mb: float = 0.0
    enroll_per_s: float = 0.0
    enroll_cpu_ms: float = 0.0


async def run(
    port: int,
    admin: str,
    agents: list[SimAgent],
    controller_pid: int,
    ca_file: Path,
    policy_rounds: bool,
    full_push: bool = True,
) -> Figures:
    url = f"https://127.0.0.1:{port}"
    timeout = httpx.Timeout(POLL_TIMEOUT_S + 30)
    tls = ssl.create_default_context(cafile=str(ca_file))  # the controller's own CA, as agents pin it
    n = len(agents)
    full_rounds = 0 if not full_push else ROUNDS if n <= FULL_ROUNDS_UP_TO else 1
    for a in agents:
        a.conn = AgentConnection(port, a.credential, tls)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=timeout, verify=tls) as client:
            if n > STORM_UP_TO:
                # n full maps of n peers each in flight at once is n^2 bytes in the controller (about
                # 12 GB at 5,000): the connections come up a few at a time and there is no baseline.
                await fetch_all(agents, STORM_BATCH)
                baseline = float("nan")
            else:
                await fetch_all(agents)  # connections up
                baseline = min([await fetch_all(agents) for _ in range(2 if full_rounds > 1 else 1)])
            print(
                f"{'fetch':<6} {'':>5} {'':>9} {'':>8} {'':>7} {'':>7} {baseline:>7.3f} {'':>9} {'':>12} {'':>12} {'':>6} "
                f"{resident_mb(controller_pid)[0]:>7.0f}  (all fetch at once)"
            )
            polling = Polling()
            tasks = [asyncio.create_task(poll_forever(a, polling)) for a in agents]
            try:
                full = [
                    await push_round("full", i, client, admin, agents, tasks, polling, controller_pid)
                    for i in range(1, full_rounds + 1)
                ]
                # From now on the agents ask for deltas; the polls parked without delta=1 are answered
                # by one unmeasured enrollment.
                polling.delta = True
                await push_round(
                    "warmup", 0, client, admin, agents, tasks, polling, controller_pid, show=False
                )
                delta = [
                    await push_round("delta", i, client, admin, agents, tasks, polling, controller_pid)
                    for i in range(ROUNDS + 1, 2 * ROUNDS + 1)
                ]
                # Each removal takes away one of the hosts the delta rounds enrolled (the newest ids).
                r = await client.get(api.NODES, headers={"Authorization": f"Bearer {admin}"})
                r.raise_for_status()
                newest = sorted(node["node_id"] for node in r.json())[-ROUNDS:]
                removal = [
                    await remove_round(i, client, admin, node_id, agents, tasks, polling, controller_pid)
                    for i, node_id in enumerate(newest, 1)
                ]
                policy = []
                if policy_rounds:
                    # The policy goes in force (every map changes), then each round toggles the api rule.
                    await policy_round(
                        1, client, admin, agents, tasks, polling, controller_pid, None, show=False
                    )
                    affected = set(SUPERVISORS) | set(clients(n))
                    policy = [
                        await policy_round(i, client, admin, agents, tasks, polling, controller_pid, affected)
                        for i in range(2, ROUNDS + 2)
                    ]
            finally:
                polling.stop.set()
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            verified = await verify(agents)
            rss, peak = resident_mb(controller_pid)
            rate, enroll_cpu_ms = await enroll_rate(client, admin, ENROLLMENTS, controller_pid)
        return Figures(
            baseline,
            full,
            delta,
            verified,
            sum(a.mismatches for a in agents),
            policy,
            removal,
            rss,
            peak,
            rate,
            enroll_cpu_ms,
        )
    finally:
        for a in agents:
            if a.conn is not None:
                await a.conn.close()


def measure(n: int, policy_rounds: bool, full_push: bool = True) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8 * n), hard))
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    state_dir = Path(tempfile.mkdtemp(prefix="wgmesh-bench-push-", dir=base))
    process: subprocess.Popen[str] | None = None
    try:
        t = time.perf_counter()
        agents = seed(state_dir, n)
        admin, _ = ensure_admin_credential(state_dir)
        seeded = time.perf_counter() - t
        port = free_port()
        t = time.perf_counter()
        process = start_controller(state_dir, port)
        started = time.perf_counter() - t
        print(f"{n} nodes seeded in {seeded:.1f} s; controller (full mesh) started in {started:.1f} s")
        print("\n" + HEADER)
        figures = asyncio.run(
            run(port, admin, agents, process.pid, state_dir / "tls" / "ca.crt", policy_rounds, full_push)
        )
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(state_dir, ignore_errors=True)
    baseline = figures.baseline

    def med(rounds: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rounds) if rounds else float("nan")

    delta_all, full_all = med(figures.delta, "all"), med(figures.full, "all")
    delta_worst = max(r["all"] for r in figures.delta)
    removal_all = med(figures.removal, "all")
    ok, checked = figures.verified
    print(
        f"\n{'all ' + str(n) + ' agents hold the new map':<44} {'median s':>9} {'worst s':>8} {'KB/agent':>9}"
    )
    print(f"{'baseline: all fetch their full map at once':<44} {baseline:>9.3f} {'':>8} {'':>9}")
    for label, rounds in (
        ("full-map push (long-poll, no delta)", figures.full),
        ("delta push (delta=1)", figures.delta),
        ("removal, delta push", figures.removal),
    ):
        worst = max((r["all"] for r in rounds), default=float("nan"))
        print(f"{label:<44} {med(rounds, 'all'):>9.3f} {worst:>8.3f} {med(rounds, 'kb'):>9.1f}")
    cpu_join, cpu_removal = med(figures.delta, "server_cpu"), med(figures.removal, "server_cpu")
    print(
        f"\nCPU per push (median): controller {med(figures.full, 'server_cpu'):.2f} s full, "
        f"{cpu_join:.2f} s delta, {cpu_removal:.2f} s removal; the {n} simulated agents "
        f"{med(figures.full, 'agents_cpu'):.2f} s full, {med(figures.delta, 'agents_cpu'):.2f} s delta; "
        f"{os.cpu_count()} cores shared"
    )
    print(
        f"delta check: {ok}/{checked} agents rebuilt by apply_delta equal a full fetch; "
        f"{figures.mismatches} deltas did not apply to the map held"
    )
    print(
        f"controller resident memory {figures.rss_mb:.0f} MB (peak {figures.peak_rss_mb:.0f} MB); "
        f"{figures.enroll_per_s:.1f} enrollments per second with nobody polling "
        f"({figures.enroll_cpu_ms:.0f} ms of controller CPU each)"
    )
    goal = delta_all <= 1.0 and removal_all <= 1.0 and ok == checked > 0 and figures.mismatches == 0
    if figures.policy:
        policy_all = med(figures.policy, "all")
        policy_others = max(r["others"] for r in figures.policy)
        affected = len(SUPERVISORS) + len(clients(n))
        print(
            f"policy change: all {affected} affected agents hold their new map in "
            f"{policy_all:.3f} s (median; worst {max(r['all'] for r in figures.policy):.3f} s, the admin's PUT "
            f"answered in {med(figures.policy, 'put'):.3f} s); other agents given a new map: {int(policy_others)}"
        )
        print(
            f"policy change CPU until the last affected agent held its map (median): controller "
            f"{med(figures.policy, 'server_cpu'):.2f} s, the simulated agents {med(figures.policy, 'agents_cpu'):.2f} s, "
            f"at load average {med(figures.policy, 'load'):.1f} on {os.cpu_count()} cores (wall well above CPU with "
            "the machine idle would mean something waits)"
        )
        print(
            f"RESULT name=push_policy agents={n} affected={affected} "
            f"policy_push_all_s={policy_all:.3f} policy_push_worst_s={max(r['all'] for r in figures.policy):.3f} "
            f"policy_put_s={med(figures.policy, 'put'):.3f} policy_over_delta={policy_all / delta_all:.2f} "
            f"unaffected_maps={int(policy_others)} controller_cpu_policy_s={med(figures.policy, 'server_cpu'):.2f} "
            f"agents_cpu_policy_s={med(figures.policy, 'agents_cpu'):.2f} load1={med(figures.policy, 'load'):.1f} "
            f"goal_met={'yes' if policy_all <= 1.0 and policy_others == 0 else 'no'}"
        )
    print(
        f"RESULT name=push agents={n} delta_push_all_s={delta_all:.3f} delta_push_worst_s={delta_worst:.3f} "
        f"delta_push_p50_s={med(figures.delta, 'p50'):.3f} removal_push_all_s={removal_all:.3f} "
        f"full_push_all_s={full_all:.3f} "
        f"fetch_all_baseline_s={baseline:.3f} delta_over_fetch={delta_all / baseline:.2f} "
        f"full_over_delta={full_all / delta_all:.1f} delta_kb={med(figures.delta, 'kb'):.1f} "
        f"full_kb={med(figures.full, 'kb'):.1f} controller_cpu_delta_s={cpu_join:.3f} "
        f"controller_cpu_removal_s={cpu_removal:.3f} agents_cpu_delta_s={med(figures.delta, 'agents_cpu'):.2f} "
        f"controller_rss_mb={figures.rss_mb:.0f} controller_peak_rss_mb={figures.peak_rss_mb:.0f} "
        f"enroll_per_s={figures.enroll_per_s:.1f} enroll_cpu_ms={figures.enroll_cpu_ms:.1f} verified={ok}/{checked} "
        f"load1={med(figures.delta, 'load'):.1f} goal_met={'yes' if goal else 'no'}"
    )
    return 0


_RESULT = re.compile(r"(\w+)=([-\w./]+)")


def compare(sizes: list[int]) -> int:
    """One process per size; the figures side by side, each against the first size's."""
    rows: list[dict[str, str]] = []
    for n in sizes:
        print(f"\n== {n} agents ==", flush=True)
        cmd = [sys.executable, "-m", "bench.push", "--agents", str(n), "--no-policy", "--no-full"]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
            assert proc.stdout is not None
            result = ""
            for line in proc.stdout:
                print(line, end="", flush=True)
                if line.startswith("RESULT name=push "):
                    result = line
        if proc.returncode != 0 or not result:
            print(f"bench.push --agents {n} failed", file=sys.stderr)
            return 1
        rows.append(dict(_RESULT.findall(result)))
    first = rows[0]
    n0 = int(first["agents"])
    print(
        f"\n{'agents':>7} {'join all s':>10} {'removal all s':>13} {'CPU/join s':>10} {'CPU/removal s':>13} "
        f"{'CPU/join ratio':>14} {'agents ratio':>12} {'RSS MB':>7} {'enroll/s':>9} {'enroll ratio':>12} "
        f"{'CPU/enroll ms':>13} {'load1':>6}"
    )
    for r in rows:
        n = int(r["agents"])
        cpu_ratio = float(r["controller_cpu_delta_s"]) / max(float(first["controller_cpu_delta_s"]), 1e-3)
        print(
            f"{n:>7} {float(r['delta_push_all_s']):>10.3f} {float(r['removal_push_all_s']):>13.3f} "
            f"{float(r['controller_cpu_delta_s']):>10.3f} {float(r['controller_cpu_removal_s']):>13.3f} "
            f"{cpu_ratio:>14.2f} {n / n0:>12.2f} {float(r['controller_rss_mb']):>7.0f} "
            f"{float(r['enroll_per_s']):>9.1f} {float(r['enroll_per_s']) / float(first['enroll_per_s']):>12.2f} "
            f"{float(r.get('enroll_cpu_ms', 'nan')):>13.1f} {r.get('load1', '?'):>6}"
        )
    last = rows[-1]
    linear = (
        float(last["controller_cpu_delta_s"])
        / max(float(first["controller_cpu_delta_s"]), 1e-3)
        / (int(last["agents"]) / n0)
    )
    enroll = float(first["enroll_per_s"]) / float(last["enroll_per_s"])
    enroll_cpu = float(last.get("enroll_cpu_ms", "nan")) / float(first.get("enroll_cpu_ms", "nan"))
    print(
        f"RESULT name=push_scale sizes={','.join(r['agents'] for r in rows)} "
        f"cpu_per_join_growth_over_linear={linear:.2f} enroll_slowdown={enroll:.2f} "
        f"enroll_cpu_growth={enroll_cpu:.2f} "
        f"largest_join_all_s={float(last['delta_push_all_s']):.3f} "
        f"largest_removal_all_s={float(last['removal_push_all_s']):.3f} "
        f"largest_rss_mb={float(last['controller_rss_mb']):.0f} "
        f"goal_met={'yes' if linear <= 1.5 and enroll <= 2 and float(last['delta_push_all_s']) <= 1 else 'no'}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench push", description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=AGENTS, help="simulated agents (default %(default)s)")
    parser.add_argument(
        "--sizes",
        help="comma-separated agent counts: one run each, figures side by side (e.g. 1000,2000,5000)",
    )
    parser.add_argument("--no-policy", action="store_true", help="leave out the access-policy rounds")
    parser.add_argument("--no-full", action="store_true", help="leave out the full-map push rounds")
    args = parser.parse_args(argv)
    if args.sizes:
        try:
            sizes = [int(x) for x in args.sizes.split(",")]
        except ValueError:
            parser.error(f"--sizes: not a list of numbers: {args.sizes!r}")
        if any(x < 20 for x in sizes):
            parser.error("--sizes: every size must be at least 20 agents")
        return compare(sizes)
    if args.agents < 20:
        parser.error("--agents must be at least 20 (the policy rounds tag 20 of them)")
    return measure(args.agents, not args.no_policy, not args.no_full)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
