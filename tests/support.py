"""What the tests share: one bounded wait (`eventually`, and `wait_until` for the blocking root tiers),
free loopback ports, the installed program, and the harnesses more than one test module drives: an
in-process controller (`ControllerHarness`), a controller process (`Served`), agents around an
in-process controller (`AgentMesh`), p2p nodes on loopback (`NodeMesh`) and p2p state directories for
the CLI (`P2PHosts`). Fixtures over these live in the tiers' conftest.py; test modules import only this.

Every wait here has a deadline and names what it waited for when it fails.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import io
import json
import queue
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, ip_address, ip_network
from pathlib import Path
from typing import Any, TypeVar

import httpx
from fastapi import FastAPI

from agent.backends.fake import FakeBackend
from agent.backoff import RetryBackoff
from agent.daemon import Agent, AgentEdges, AgentSettings
from agent.device import Device, PeerConfig, PeerStatus
from agent.eventlog import EventLog
from agent.hostnet.base import HostConfig
from agent.hostnet.fake import FakeHostNetwork
from agent.links import ProbeResult
from agent.nft import FakeNftables
from agent.state import AgentState, StatePaths
from agent.status import AgentStatus, PeerView
from controller.app import create_app
from controller.credentials import admin_credential_path, ensure_admin_credential
from controller.mesh import Mesh
from controller.netmap import NodeCard
from controller.settings import Settings
from controller.sqlstore import SqlStore
from controller.tls import managed_tls
from keys import IdentityPrivateKey, WireGuardPrivateKey
from keys.store import save_key
from p2p import Message, Node, NodeConfig
from p2p.core.directory import Directory, DirectoryEntry
from p2p.directory import write_directory
from wire import api
from wire.models import EnrollRequest, NetMap, PreAuthKeyInfo, SelfNode, enroll_signing_bytes
from wire.preauth import parse_preauth_key

T = TypeVar("T")

# --- waiting ------------------------------------------------------------------------------------------


async def eventually(
    what: str,
    check: Callable[[], T | None] | Callable[[], Awaitable[T | None]],
    timeout: float = 10.0,
    interval: float = 0.02,
    show: Callable[[], str] | None = None,
) -> T:
    """Poll `check` (plain or async) until it returns something truthy and return that; at the deadline
    fail naming `what` (and `show()`, for instance the logs)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(what, timeout, show))
        await asyncio.sleep(interval)


def wait_until(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    interval: float = 0.1,
    show: Callable[[], str] | None = None,
) -> T:
    """`eventually` for tests that block (processes, namespaces): poll `probe` until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(what, timeout, show))
        time.sleep(interval)


async def finished(task: asyncio.Task[T], what: str, timeout: float = 20.0) -> T:
    """`task`'s result, awaited for `timeout` seconds at most; at the deadline it is cancelled and the
    test fails naming `what`."""
    try:
        async with asyncio.timeout(timeout):
            return await task
    except TimeoutError:
        task.cancel()
        raise AssertionError(f"{what} did not finish within {timeout:g} s") from None


def _timed_out(what: str, timeout: float, show: Callable[[], str] | None) -> str:
    detail = f"\n{show()}" if show else ""
    return f"timed out after {timeout:g} s waiting for {what}{detail}"


# --- ports and programs -------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at `host` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# The program `pip install` put next to the interpreter running the tests (.venv/bin/wgmesh after
# `make venv`, another environment's own otherwise), and the same program as `python -m wgmesh`.
WGMESH_PROGRAM = Path(sys.executable).parent / "wgmesh"
WGMESH = [sys.executable, "-m", "wgmesh"]


def installed_wgmesh() -> str:
    """The installed `wgmesh` console script, for tests that run it by path (as root inside namespaces)."""
    if not WGMESH_PROGRAM.is_file():
        raise AssertionError(
            f"no wgmesh program next to {sys.executable}: install the project (pip install -e .)"
        )
    return str(WGMESH_PROGRAM)


def run_wgmesh(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*WGMESH, *args], capture_output=True, text=True, timeout=timeout, env=env)


def stop_process(process: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """Signal `process` and wait for it; kill it when it outlasts `timeout`."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def read_until(process: subprocess.Popen[str], marker: str, timeout: float) -> list[str]:
    """The lines `process` prints on stdout up to the first one holding `marker`, read for `timeout`
    seconds at most (a reader thread: a silent process cannot block the test)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in iter(process.stdout.readline, ""):
            lines.put(line.rstrip("\n"))
            if marker in line:
                return
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if marker in line:
            return seen
    stderr = ""
    if process.poll() is not None and process.stderr is not None:
        stderr = process.stderr.read()
    raise AssertionError(f"no line with {marker!r} within {timeout:g} s: {seen} {stderr}")


# --- a controller in this process ---------------------------------------------------------------------


CONTROLLER_URL = "http://controller"
MESH_CIDR = ip_network("198.19.0.0/16")


class SyncClient:
    """A synchronous HTTP client of an ASGI app in this process (httpx over its ASGI transport, on an
    event loop of its own), for tests that cannot await: what Starlette's TestClient did before it
    wanted another HTTP package. An exception in the app is raised here. As a context manager it also
    runs the app's lifespan (its background tasks run while a request is under way)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._loop = asyncio.new_event_loop()
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
        self._lifespan: contextlib.AbstractAsyncContextManager[Any] | None = None

    def __enter__(self) -> SyncClient:
        self._lifespan = self.app.router.lifespan_context(self.app)
        self._loop.run_until_complete(self._lifespan.__aenter__())
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._lifespan is not None:
            self._loop.run_until_complete(self._lifespan.__aexit__(None, None, None))
        self.close()

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        content = kwargs.get("content")
        if isinstance(content, Iterator):  # a body in chunks, without Content-Length
            kwargs["content"] = _async_chunks(content)
        return self._loop.run_until_complete(self._client.request(method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", url, **kwargs)

    def close(self) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._loop.close()


async def _async_chunks(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def ui_delta_applied(view: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """A topology page view (controller.ui_feed) with `delta` applied, as the page's script does."""
    nodes = {n["id"]: n for n in view["nodes"]}
    links = {(lk["a"], lk["b"]): lk for lk in view["links"]}
    for i in delta["nodes_gone"]:
        del nodes[i]
    for a, b in delta["links_gone"]:
        del links[(a, b)]
    nodes.update((n["id"], n) for n in delta["nodes"])
    links.update(((lk["a"], lk["b"]), lk) for lk in delta["links"])
    whole = {k: v for k, v in delta.items() if k not in ("nodes", "nodes_gone", "links", "links_gone")}
    return {
        **view,
        **whole,
        "nodes": sorted(nodes.values(), key=lambda n: n["id"]),
        "links": sorted(links.values(), key=lambda lk: (lk["a"], lk["b"])),
    }


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self.t = start or datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


@dataclass
class Host:
    """An enrolled host as a test sees it: its keys, node id, address and credential."""

    hostname: str
    identity: IdentityPrivateKey
    wg: WireGuardPrivateKey
    node_id: int = 0
    name: str = ""
    address: str = ""
    credential: str = ""
    endpoints: list[str] = field(default_factory=list)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credential}"}


def make_host(hostname: str, number: int = 1, endpoints: list[str] | None = None) -> Host:
    """A host with fresh keys that has not enrolled yet; `number` picks its underlay endpoint."""
    return Host(
        hostname=hostname,
        identity=IdentityPrivateKey.generate(),
        wg=WireGuardPrivateKey.generate(),
        endpoints=endpoints if endpoints is not None else [f"198.18.0.{number}:51820"],
    )


UNISSUED_NONCE = "n0t-a-nonce-the-controller-issued"


def enroll_request(
    host: Host, key: str, nonce: str = UNISSUED_NONCE, listen_port: int = 51820
) -> EnrollRequest:
    """`host`'s signed request; `nonce` from POST /v1/enroll/nonce (the default is refused)."""
    unsigned = EnrollRequest(
        preauth_key=key,
        nonce=nonce,
        hostname=host.hostname,
        wg_public_key=host.wg.public_key(),
        identity_public_key=host.identity.public_key(),
        endpoints=host.endpoints,
        listen_port=listen_port,
        signature="-",
    )
    signature = base64.b64encode(host.identity.sign(enroll_signing_bytes(unsigned))).decode()
    return unsigned.model_copy(update={"signature": signature})


class ControllerHarness:
    """`managed_ca`: the controller has its own CA (served at /v1/tls/ca, pinned in pre-auth keys); the
    ASGI transport still carries no TLS."""

    def __init__(
        self, state_dir: Path, clock: ManualClock, managed_ca: bool = False, **settings: Any
    ) -> None:
        self.settings = Settings(**{"state_dir": state_dir, "mesh_cidr": MESH_CIDR, **settings})
        self.clock = clock
        self.managed_ca = managed_ca
        self._hosts = 0
        self._start()

    def _start(self) -> None:
        self.store = SqlStore(self.settings.database_url)
        tls = None
        if self.managed_ca:
            tls = managed_tls(self.settings.state_dir / "tls", ["controller"], datetime.now(UTC))
        self.app: FastAPI = create_app(self.settings, self.store, self.clock, tls)
        self.transport = httpx.ASGITransport(app=self.app)
        self.client = httpx.AsyncClient(transport=self.transport, base_url=CONTROLLER_URL)
        credential = admin_credential_path(self.settings.state_dir).read_text().strip()
        self.admin = {"Authorization": f"Bearer {credential}"}

    async def close(self) -> None:
        await self.client.aclose()
        self.app.state.plane.close()

    async def restart(self) -> None:
        """Stop this controller and start a new one on the same state directory and database."""
        await self.close()
        self._start()

    async def new_key(self, **request: Any) -> str:
        r = await self.client.post(api.PREAUTH_KEYS, json=request, headers=self.admin)
        assert r.status_code == 201, r.text
        return str(r.json()["key"])

    def new_host(self, hostname: str | None = None, endpoints: list[str] | None = None) -> Host:
        self._hosts += 1
        return make_host(hostname or f"host-{self._hosts}", self._hosts, endpoints)

    async def nonce(self) -> str:
        r = await self.client.post(api.ENROLL_NONCE)
        assert r.status_code == 200, r.text
        return str(r.json()["nonce"])

    async def enroll_raw(self, host: Host, key: str) -> httpx.Response:
        body = enroll_request(host, key, await self.nonce()).model_dump_json()
        return await self.client.post(api.ENROLL, content=body, headers={"Content-Type": "application/json"})

    async def enroll(self, host: Host | None = None, key: str | None = None) -> Host:
        """Enroll `host` (a new one by default) with `key` (a new single-use key by default)."""
        host = host or self.new_host()
        r = await self.enroll_raw(host, key or await self.new_key())
        assert r.status_code == 200, r.text
        body = r.json()
        host.node_id, host.name = body["node_id"], body["name"]
        host.address, host.credential = body["tunnel_address"], body["node_credential"]
        return host

    async def netmap(self, host: Host, since: int = 0, timeout: float = 0) -> NetMap | None:
        """The host's map, or None on 204."""
        r = await self.client.get(api.NETMAP, params={"since": since, "timeout": timeout}, headers=host.auth)
        if r.status_code == 204:
            return None
        assert r.status_code == 200, r.text
        return NetMap.model_validate_json(r.content)

    async def polls_parked(self, nodes: int) -> None:
        """Until `nodes` nodes have a poll parked in the controller (the condition, not a sleep)."""
        notifier = self.app.state.notifier
        await eventually(f"{nodes} parked polls", lambda: notifier.waiting() >= nodes, interval=0.005)

    async def report(self, host: Host, *measurements: dict[str, Any]) -> None:
        r = await self.client.post(api.LINKS, json={"measurements": list(measurements)}, headers=host.auth)
        assert r.status_code == 204, r.text


LONG_POLL_S = 30.0  # seconds a poll may wait; a test that would need it fails on pytest's timeout instead


async def serial_of(controller: ControllerHarness, host: Host) -> int:
    """The serial of `host`'s current map."""
    netmap = await controller.netmap(host)
    assert netmap is not None
    return netmap.serial


DEADLINE_S = 20.0  # what the replica tests give a change to reach another replica


class Replica(ControllerHarness):
    """A controller replica with its follower running, as `controller serve` runs it."""

    def __init__(self, name: str, state_dir: Path, clock: ManualClock, db_url: str) -> None:
        super().__init__(state_dir, clock, db_url=db_url)
        self.name = name
        self.task = asyncio.create_task(self.app.state.follower.run())

    async def close(self) -> None:
        self.app.state.follower.stop()
        await finished(self.task, f"replica {self.name}'s follower", DEADLINE_S)
        await super().close()


class HangingLink:
    """A TCP relay on loopback to `host:port`, in threads of its own (it keeps relaying when the test's
    event loop is stuck). `cut()` makes the far side stop answering as a dropped network does, as far
    as a client can tell: what it sends is accepted and held, new connections are accepted and never
    answered, nothing is closed. `heal()` lets everything held through. `port`: where to connect."""

    def __init__(self, host: str, port: int) -> None:
        self._to = (host, port)
        self._open = threading.Event()
        self._open.set()
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, name="hanging-link", daemon=True).start()

    def cut(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._closed = True
        self._open.set()
        for s in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self._open.wait()  # a connection made while cut reaches nothing until healed
        try:
            server = socket.create_connection(self._to, timeout=10)
        except OSError:
            client.close()
            return
        server.settimeout(None)
        self._sockets.append(server)
        for src, dst in ((client, server), (server, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                self._open.wait()  # while cut, what arrives is held, neither answered nor refused
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


async def poll_netmap(
    replica: ControllerHarness, host: Host, since: int, timeout: float = 0
) -> httpx.Response:
    """One long-poll of `host`'s map on `replica`, answered as it comes (200, 204, 410...)."""
    return await replica.client.get(
        api.NETMAP, params={"since": since, "timeout": timeout}, headers=host.auth
    )


# --- a controller process -----------------------------------------------------------------------------


class Served:
    """`wgmesh controller serve` running on 127.0.0.1 with its state directory; `first_lines` are what
    it printed up to its ready line."""

    def __init__(
        self, state_dir: Path, port: int, process: subprocess.Popen[str], first_lines: list[str]
    ) -> None:
        self.state_dir = state_dir
        self.url = f"https://127.0.0.1:{port}"
        self.process = process
        self.first_lines = first_lines

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_wgmesh(*args, "--controller", self.url, "--state-dir", str(self.state_dir))

    def http(self) -> httpx.Client:
        """A client that trusts the controller's CA, as a pinned agent does."""
        ca = ssl.create_default_context(cafile=str(self.state_dir / "tls" / "ca.crt"))
        return httpx.Client(base_url=self.url, verify=ca, headers={"Content-Type": "application/json"})

    def enroll(self, name: str, key: str) -> httpx.Response:
        with self.http() as c:
            nonce = c.post(api.ENROLL_NONCE).json()["nonce"]
            secret = parse_preauth_key(key).secret
            return c.post(
                api.ENROLL, content=enroll_request(make_host(name), secret, nonce).model_dump_json()
            )

    def stop(self) -> None:
        stop_process(self.process)


def start_controller(state_dir: Path, env: dict[str, str] | None = None) -> Served:
    """Start `wgmesh controller serve` and wait (30 s at most) for its ready line."""
    port = free_port()
    process = subprocess.Popen(
        [
            *WGMESH,
            "controller",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--state-dir",
            str(state_dir),
            "--mesh-cidr",
            "198.19.0.0/16",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lines = read_until(process, "ready", timeout=30)
    except AssertionError:
        stop_process(process)
        raise
    return Served(state_dir, port, process, lines)


# --- agents around a controller in this process -------------------------------------------------------

AGENT_MESH_CIDR = ip_network("10.99.0.0/16")
AGENT_RTT_MS = 1.5
STOP_S = 20.0  # an agent told to stop is done within this


class SteadyProber:
    """Every peer answers in AGENT_RTT_MS without loss (the controller sees measured, healthy links)."""

    def __init__(self) -> None:
        self.rounds = 0

    async def probe(self, targets):
        self.rounds += 1
        return {t: ProbeResult(sent=3, received=3, rtt_ms=AGENT_RTT_MS) for t in targets}


class FlakyHostNetwork(FakeHostNetwork):
    """A host network the kernel refuses while `broken`; counts every attempt."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False
        self.calls = 0

    def set(self, config: HostConfig) -> list[str]:
        self.calls += 1
        if self.broken:
            raise OSError(errno.EPERM, "Operation not permitted")
        return super().set(config)


class SwitchableTransport(httpx.AsyncBaseTransport):
    """The network between agents and controller; `down` makes every new request fail to connect."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.down = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        return await self.inner.handle_async_request(request)


@dataclass
class AgentHost:
    name: str
    state_dir: Path
    backend: FakeBackend = field(default_factory=FakeBackend)
    host_network: FlakyHostNetwork = field(default_factory=FlakyHostNetwork)
    out: io.StringIO = field(default_factory=io.StringIO)
    prober: SteadyProber = field(default_factory=SteadyProber)
    firewall: FakeNftables = field(default_factory=FakeNftables)
    agent: Agent | None = None
    stop: asyncio.Event | None = None
    task: asyncio.Task[None] | None = None

    def log(self) -> str:
        return self.out.getvalue()

    def peers(self) -> dict[str, list[str]]:
        """peer name -> allowed IPs, as the device has them (names from the agent's current map)."""
        assert self.agent is not None and self.agent.netmap is not None
        names = {p.wg_public_key: p.name for p in self.agent.netmap.peers}
        device = self.backend.read("wg0")
        return {names.get(k, "?"): [str(n) for n in p.config.allowed_ips] for k, p in device.peers.items()}

    def status(self) -> AgentStatus:
        return AgentStatus.load(StatePaths(self.state_dir).status)


class AgentMesh:
    """A controller and the hosts around it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        settings = Settings(state_dir=tmp / "controller", mesh_cidr=AGENT_MESH_CIDR)
        settings.state_dir.mkdir(mode=0o700)
        self.store = SqlStore(settings.database_url)
        # The controller's own CA: its pin is in the pre-auth key, which every agent checks on enrollment
        # (the ASGI transport carries no TLS; the lab and the process tests run the real handshake).
        self.tls = managed_tls(settings.state_dir / "tls", ["controller"], datetime.now(UTC))
        self.app = create_app(settings, self.store, tls=self.tls)
        # an exception in the app becomes a 500, as uvicorn answers in production
        self.transport = SwitchableTransport(httpx.ASGITransport(app=self.app, raise_app_exceptions=False))
        self.admin = ensure_admin_credential(settings.state_dir)[0]
        self.hosts: dict[str, AgentHost] = {}
        self.preauth_key = ""

    def admin_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=self.transport,
            base_url="https://controller",
            headers={"Authorization": f"Bearer {self.admin}"},
        )

    async def create_preauth_key(self) -> None:
        async with self.admin_client() as c:
            r = await c.post(api.PREAUTH_KEYS, json={"reusable": True})
            assert r.status_code == 201, r.text
            key = PreAuthKeyInfo.model_validate_json(r.content).key
            assert key is not None
            self.preauth_key = key

    def host(self, name: str) -> AgentHost:
        if name not in self.hosts:
            self.hosts[name] = AgentHost(name, self.tmp / name)
        return self.hosts[name]

    async def start(self, name: str, enroll: bool = True, probe_interval_s: float = 0.1) -> AgentHost:
        h = self.host(name)
        index = sorted(self.hosts).index(name) + 2
        settings = AgentSettings(
            state_dir=h.state_dir,
            controller_url="https://controller" if enroll else None,
            token=parse_preauth_key(self.preauth_key).secret if enroll else None,
            ca_pin=parse_preauth_key(self.preauth_key).ca_pin if enroll else None,
            hostname=name,
            endpoints=(f"198.18.0.{index}:51820",),
            probe_interval_s=probe_interval_s,
            poll_timeout_s=5,
            direct_probes=False,  # the device's allowed IPs as the map has them (agent.desired)
        )
        edges = AgentEdges(
            backend=h.backend,
            host_network=h.host_network,
            prober=h.prober,
            log=EventLog(h.out),
            transport=self.transport,
            backoff=RetryBackoff(initial_s=0.02, max_s=0.1),
            firewall=h.firewall,
        )
        h.agent = Agent(settings, edges)
        await h.agent.start()
        h.stop = asyncio.Event()
        h.task = asyncio.create_task(h.agent.serve(h.stop))
        return h

    async def stop(self, name: str) -> None:
        """Stop `name`'s agent as SIGTERM does; fail (after cancelling it) when it takes over STOP_S."""
        h = self.hosts[name]
        assert h.agent is not None and h.stop is not None and h.task is not None
        h.stop.set()
        task, h.task = h.task, None
        try:
            await finished(task, f"agent {name}", STOP_S)
            await finished(asyncio.ensure_future(h.agent.shutdown()), f"agent {name}'s shutdown", STOP_S)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.all_logs()}") from None

    async def aclose(self) -> None:
        """Stop every running agent and close the controller's store."""
        try:
            for name, h in self.hosts.items():
                if h.task is not None:
                    await self.stop(name)
        finally:
            self.store.close()

    async def admin_get(self, path: str) -> httpx.Response:
        async with self.admin_client() as c:
            return await c.get(path)

    async def remove(self, name: str) -> None:
        state = AgentState.load(self.hosts[name].state_dir)
        async with self.admin_client() as c:
            r = await c.delete(f"{api.NODES}/{state.node_id}")
            assert r.status_code == 204, r.text

    def all_logs(self) -> str:
        return "\n".join(f"--- {h.name}\n{h.log()}" for h in self.hosts.values())


# --- p2p nodes on loopback ---------------------------------------------------------------------------

FAST = NodeConfig(
    heartbeat_interval=0.1,
    dead_after=0.6,
    backoff_initial=0.05,
    backoff_max=0.3,
    handshake_timeout=2.0,
    send_timeout=2.0,
)


class NodeMesh:
    """n nodes: keys, directory entries on 127.0.0.(10+i), and nodes started on demand."""

    def __init__(self, n: int, roles: dict[int, str] | None = None) -> None:
        self.keys = {i: IdentityPrivateKey.generate() for i in range(1, n + 1)}
        self.entries: dict[int, DirectoryEntry] = {}
        for i, key in self.keys.items():
            host = f"127.0.0.{10 + i}"
            self.entries[i] = DirectoryEntry(
                i,
                f"n{i}",
                IPv4Address(host),
                (roles or {}).get(i, "worker"),
                key.public_key(),
                free_port(host),
            )
        self.nodes: dict[int, Node] = {}
        self.inbox: dict[int, list[Message]] = {i: [] for i in self.keys}

    def directory(self, own: int, overrides: dict[int, DirectoryEntry] | None = None) -> Directory:
        entries = {**self.entries, **(overrides or {})}
        return Directory.of(entries[own], [e for i, e in entries.items() if i != own])

    async def start(
        self, i: int, *, directory: Directory | None = None, config: NodeConfig = FAST, **kw
    ) -> Node:
        node = Node(directory or self.directory(i), self.keys[i], config=config, **kw)

        async def record(message: Message) -> str:
            self.inbox[i].append(message)
            return f"n{i} got {message.type}"

        node.handle_any(record)
        await node.start()
        self.nodes[i] = node
        return node

    async def stop(self, i: int) -> None:
        """Close node `i`; fail (after cancelling the close) when it takes over STOP_S."""
        await finished(asyncio.ensure_future(self.nodes.pop(i).close()), f"node {i}'s close", STOP_S)

    async def close(self) -> None:
        for i in list(self.nodes):
            await self.stop(i)

    def got(self, i: int, type_: str) -> list[Message]:
        return [m for m in self.inbox[i] if m.type == type_]


class P2PHosts:
    """Three state directories, a (1, supervisor), b (2) and c (3), each with its key and directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.keys = {i: IdentityPrivateKey.generate() for i in (1, 2, 3)}
        self.entries = {
            i: DirectoryEntry(
                i,
                name,
                IPv4Address(f"127.0.0.{30 + i}"),
                "supervisor" if i == 1 else "worker",
                self.keys[i].public_key(),
                free_port(f"127.0.0.{30 + i}"),
            )
            for i, name in ((1, "a"), (2, "b"), (3, "c"))
        }
        for i in self.keys:
            state = self.state(i)
            save_key(state / "identity.key", self.keys[i])
            write_directory(state / "p2p-directory.json", self.directory(i))

    def state(self, i: int) -> Path:
        return self.root / f"host{i}"

    def directory(self, i: int) -> Directory:
        return Directory.of(self.entries[i], [e for j, e in self.entries.items() if j != i])

    def run(self, i: int, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*WGMESH, "p2p", *args, "--state-dir", str(self.state(i))],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def listen(self, i: int) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [*WGMESH, "p2p", "listen", "--state-dir", str(self.state(i))],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            lines = read_until(proc, "listening on port", timeout=20)
        except AssertionError:
            stop_process(proc)
            raise
        assert len(lines) == 1, lines  # the first line says where it listens
        return proc


def stop_listener(proc: subprocess.Popen[str]) -> str:
    """Interrupt a listener as Ctrl-C does; what it printed."""
    stop_process(proc, signal.SIGINT, timeout=5)
    return proc.stdout.read() if proc.stdout else ""


# --- network maps as the controller renders them ------------------------------------------------------

# A one-node map as the controller sends it (no peers yet).
SAMPLE_NETMAP = NetMap(
    serial=5,
    node=SelfNode(
        node_id=1,
        name="a",
        role="node",
        tunnel_address=ip_address("10.99.0.1"),
        mesh_cidr=ip_network("10.99.0.0/16"),
        listen_port=51820,
    ),
    peers=[],
    routes=[],
    forward=False,
)


T0 = datetime(2026, 1, 1, tzinfo=UTC)
_WG = [WireGuardPrivateKey.generate().public_key().base64() for _ in range(40)]
_ID = IdentityPrivateKey.generate().public_key().base64()


def card(n: int) -> NodeCard:
    return NodeCard(n, f"node-{n}", "node", _WG[n % 40], _ID, MESH_CIDR[n], (f"198.18.0.{n}:51820",), 51820)


def maps(mesh: Mesh) -> dict[int, NetMap]:
    return {n: NetMap.model_validate_json(mesh.render(n)) for n in mesh.cards}


def deliver(netmaps: dict[int, NetMap], src: int, dst: int) -> list[int]:
    """Send a packet src -> dst the way WireGuard would, hop by hop, through the rendered maps."""
    src_ip = ip_address(netmaps[src].node.tunnel_address)
    dst_ip = ip_address(netmaps[dst].node.tunnel_address)
    here, hops = src, [src]
    while here != dst:
        owners = [p for p in netmaps[here].peers if any(dst_ip in net for net in p.allowed_ips)]
        assert len(owners) == 1, f"{here}: {len(owners)} peers claim {dst_ip}"
        nxt = owners[0].node_id
        # The receiver accepts the packet only if the source address is in the allowed IPs of the
        # peer it came from.
        sender = next(p for p in netmaps[nxt].peers if p.node_id == here)
        assert any(src_ip in net for net in sender.allowed_ips), (
            f"{nxt} drops {src}->{dst} arriving from {here}"
        )
        if nxt != dst:
            assert netmaps[nxt].forward, f"{nxt} relays but was not told to forward"
        hops.append(nxt)
        here = nxt
        assert len(hops) <= len(netmaps), f"routing loop {hops}"
    return hops


def strip_serial(netmap: NetMap) -> str:
    """A map's content without its serial, canonical (two maps that say the same compare equal)."""
    return json.dumps(netmap.model_dump(mode="json", exclude={"serial"}), sort_keys=True)


# --- an agent's status ----------------------------------------------------------------------------

STATUS_NOW = 1_800_000_000.0
PEER_KEY_B = WireGuardPrivateKey.generate().public_key()
PEER_KEY_C = WireGuardPrivateKey.generate().public_key()


def sample_device(rx_bytes: int, tx_bytes: int) -> Device:
    """wg0 as the backend reads it live: peer beta (PEER_KEY_B) with these counters and a handshake 1 s
    before STATUS_NOW."""
    peer = PeerStatus(
        PeerConfig(PEER_KEY_B, endpoint="198.18.0.9:51820"),
        last_handshake=STATUS_NOW - 1,
        rx_bytes=rx_bytes,
        tx_bytes=tx_bytes,
    )
    return Device(name="wg0", private_key=None, listen_port=51820, fwmark=None, peers={PEER_KEY_B: peer})


def sample_status(**overrides: Any) -> AgentStatus:
    """An agent's status.json as a test starts from: two peers, one direct and one relayed."""
    fields = {
        "node_id": 1,
        "name": "alpha",
        "tunnel_address": ip_address("10.99.0.1"),
        "mesh_cidr": ip_network("10.99.0.0/16"),
        "interface": "wg0",
        "backend": "fake",
        "controller_url": "http://198.18.0.1:8080",
        "controller": "connected",
        "controller_since": STATUS_NOW - 125,
        "serial": 7,
        "netmap_source": "controller",
        "updated_at": STATUS_NOW,
        "peers": [
            PeerView(
                node_id=2,
                name="beta",
                tunnel_address=ip_address("10.99.0.2"),
                wg_public_key=PEER_KEY_B.base64(),
                endpoint="198.18.0.3:51820",
                latest_handshake=STATUS_NOW - 12,
                rx_bytes=1536,
                tx_bytes=300,
                rtt_ms=0.42,
                loss=0.0,
            ),
            PeerView(
                node_id=3,
                name="gamma",
                tunnel_address=ip_address("10.99.0.3"),
                wg_public_key=PEER_KEY_C.base64(),
                route="relay",
                via="beta",
            ),
        ],
    }
    fields.update(overrides)
    return AgentStatus(**fields)
