"""Agents and the controller in one process: the real `create_app` on a temp SQLite over
httpx.ASGITransport, each agent with its own fake backend and in-memory host network.

What a user would see: every device converges to the mesh, a new host appears everywhere, a removed
one disappears everywhere, agents run on from their cached map while the controller is down and
reconnect after, a restart changes nothing, and no log line ever shows a secret.
"""

from __future__ import annotations

import asyncio
import errno
import io
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import ip_network
from pathlib import Path

import httpx
import pytest

from agent.backends.fake import FakeBackend
from agent.backoff import Backoff
from agent.core import EXIT_REMOVED
from agent.daemon import Agent, AgentEdges, AgentSettings
from agent.eventlog import EventLog
from agent.hostnet.base import HostConfig
from agent.hostnet.fake import FakeHostNetwork
from agent.links import ProbeResult
from agent.nft import FakeNftables
from agent.state import AgentState, StatePaths, load_keys
from agent.status import AgentStatus
from controller.app import create_app
from controller.credentials import ensure_admin_credential
from controller.settings import Settings
from controller.sqlstore import SqlStore
from controller.tls import managed_tls
from p2p.directory import load_directory
from wire import api
from wire.models import PreAuthKeyInfo, Topology
from wire.preauth import parse_preauth_key

MESH_CIDR = ip_network("10.99.0.0/16")
RTT_MS = 1.5


class SteadyProber:
    """Every peer answers in RTT_MS without loss (the controller sees measured, healthy links)."""

    def __init__(self) -> None:
        self.rounds = 0

    async def probe(self, targets):
        self.rounds += 1
        return {t: ProbeResult(sent=3, received=3, rtt_ms=RTT_MS) for t in targets}


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
class Host:
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


class Mesh:
    """A controller and the hosts around it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        settings = Settings(state_dir=tmp / "controller", mesh_cidr=MESH_CIDR)
        settings.state_dir.mkdir(mode=0o700)
        self.store = SqlStore(settings.database_url)
        # The controller's own CA: its pin is in the pre-auth key, which every agent checks on enrollment
        # (the ASGI transport carries no TLS; the lab and the process tests run the real handshake).
        self.tls = managed_tls(settings.state_dir / "tls", ["controller"], datetime.now(UTC))
        self.app = create_app(settings, self.store, tls=self.tls)
        # an exception in the app becomes a 500, as uvicorn answers in production
        self.transport = SwitchableTransport(httpx.ASGITransport(app=self.app, raise_app_exceptions=False))
        self.admin = ensure_admin_credential(settings.state_dir)[0]
        self.hosts: dict[str, Host] = {}
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

    def host(self, name: str) -> Host:
        if name not in self.hosts:
            self.hosts[name] = Host(name, self.tmp / name)
        return self.hosts[name]

    async def start(self, name: str, enroll: bool = True, probe_interval_s: float = 0.1) -> Host:
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
        )
        edges = AgentEdges(
            backend=h.backend,
            host_network=h.host_network,
            prober=h.prober,
            log=EventLog(h.out),
            transport=self.transport,
            backoff=Backoff(initial_s=0.02, max_s=0.1),
            firewall=h.firewall,
        )
        h.agent = Agent(settings, edges)
        await h.agent.start()
        h.stop = asyncio.Event()
        h.task = asyncio.create_task(h.agent.serve(h.stop))
        return h

    async def stop(self, name: str) -> None:
        h = self.hosts[name]
        assert h.agent is not None and h.stop is not None and h.task is not None
        h.stop.set()
        await h.task
        await h.agent.shutdown()
        h.task = None

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


async def wait_for(what: str, check: Callable[[], object], mesh: Mesh, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{mesh.all_logs()}")
        await asyncio.sleep(0.02)


def retries(h: Host) -> int:
    """Failed controller calls in a row so far (the agent's backoff counts them)."""
    assert h.agent is not None
    return h.agent.edges.backoff.attempt


def full_mesh(mesh: Mesh, names: list[str]) -> bool:
    """Every named host's device holds exactly the other named hosts, each with its own /32."""
    addresses = {}
    for n in names:
        h = mesh.hosts[n]
        if h.agent is None or h.agent.state is None:
            return False
        addresses[n] = f"{h.agent.state.tunnel_address}/32"
    for n in names:
        h = mesh.hosts[n]
        try:
            peers = h.peers()
        except Exception:
            return False
        if peers != {o: [addresses[o]] for o in names if o != n}:
            return False
    return True


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    m = Mesh(tmp_path)
    await m.create_preauth_key()
    try:
        yield m
    finally:
        for name, h in m.hosts.items():
            if h.task is not None:
                await m.stop(name)
        m.store.close()


async def test_three_agents_converge_and_report_their_links(mesh: Mesh) -> None:
    for name in ("alpha", "beta", "gamma"):
        await mesh.start(name)
    names = ["alpha", "beta", "gamma"]
    await wait_for("a full mesh of three", lambda: full_mesh(mesh, names), mesh)

    for name in names:
        h = mesh.hosts[name]
        state = AgentState.load(h.state_dir)
        assert state.mesh_cidr == MESH_CIDR and state.tunnel_address in MESH_CIDR
        # the host network carries the tunnel address with the mesh prefix and routes the mesh
        assert [str(a) for a in h.host_network.addresses["wg0"]] == [f"{state.tunnel_address}/16"]
        assert h.host_network.routes["wg0"] == (MESH_CIDR,)
        device = h.backend.read("wg0")
        keys = load_keys(h.state_dir)
        assert device.private_key is not None
        assert device.private_key.public_key() == keys.wireguard.public_key()
        assert {p.config.endpoint for p in device.peers.values()} == {
            f"198.18.0.{i}:51820" for i, other in enumerate(sorted(names), start=2) if other != name
        }

    # links measured by every agent reach the controller's topology
    async def measured() -> bool:
        topo = Topology.model_validate_json((await mesh.admin_get(api.TOPOLOGY)).content)
        return len(topo.edges) == 3 and all(e.rtt_ms == RTT_MS for e in topo.edges)

    deadline = time.monotonic() + 15
    while not await measured():
        assert time.monotonic() < deadline, f"links never measured\n{mesh.all_logs()}"
        await asyncio.sleep(0.05)

    await wait_for(
        "status.json with every peer measured",
        lambda: all(
            len(h.status().peers) == 2 and all(p.rtt_ms == RTT_MS for p in h.status().peers)
            for h in mesh.hosts.values()
        ),
        mesh,
    )
    status = mesh.hosts["alpha"].status()
    assert status.controller == "connected" and status.netmap_source == "controller"
    assert sorted(p.name for p in status.peers) == ["beta", "gamma"]
    assert {p.route for p in status.peers} == {"direct"}
    directory = load_directory(StatePaths(mesh.hosts["alpha"].state_dir).p2p_directory)
    assert sorted(e.name for e in directory) == ["beta", "gamma"]


async def test_a_fourth_host_appears_everywhere_and_a_removed_one_disappears(mesh: Mesh) -> None:
    for name in ("alpha", "beta", "gamma"):
        await mesh.start(name)
    await wait_for("a full mesh of three", lambda: full_mesh(mesh, ["alpha", "beta", "gamma"]), mesh)

    await mesh.start("delta")
    await wait_for("delta everywhere", lambda: full_mesh(mesh, ["alpha", "beta", "delta", "gamma"]), mesh)
    alpha = mesh.hosts["alpha"]
    await wait_for("alpha to log delta", lambda: "event=peer_added peer=delta" in alpha.log(), mesh)

    await mesh.remove("beta")
    await wait_for("beta gone everywhere", lambda: full_mesh(mesh, ["alpha", "delta", "gamma"]), mesh)
    # the device changes first, the log line follows once the host network is done too
    for name in ("alpha", "delta", "gamma"):
        h = mesh.hosts[name]
        await wait_for(
            f"{name} to log beta's removal", lambda h=h: "event=peer_removed peer=beta" in h.log(), mesh
        )
    # the removed host is told once, whether its poll was parked at the removal or came after it
    beta = mesh.hosts["beta"]
    await wait_for("beta told", lambda: beta.status().controller == "removed", mesh)
    assert beta.log().count("event=node_removed") == 1
    assert "event=controller_rejected" not in beta.log()


async def test_a_removed_node_takes_its_peers_down_says_so_once_and_stops(mesh: Mesh) -> None:
    for name in ("alpha", "beta"):
        await mesh.start(name)
    await wait_for("two hosts meshed", lambda: full_mesh(mesh, ["alpha", "beta"]), mesh)
    beta = mesh.hosts["beta"]
    await mesh.remove("beta")
    await wait_for("beta's agent to stop", lambda: beta.task is not None and beta.task.done(), mesh)
    assert beta.agent is not None and beta.agent.stopped is not None
    assert beta.agent.stopped.exit_code == EXIT_REMOVED
    assert "removed this node from the mesh" in beta.agent.stopped.reason
    assert beta.log().count("event=node_removed") == 1
    assert beta.backend.read("wg0").peers == {}
    assert (beta.host_network.addresses["wg0"], beta.host_network.routes["wg0"]) == ((), ())
    assert beta.host_network.forward["wg0"] is False
    assert beta.status().controller == "removed" and beta.status().peers == []
    assert not StatePaths(beta.state_dir).netmap.exists(), "a restart would bring the peers back"
    assert not StatePaths(beta.state_dir).p2p_directory.exists()


async def test_a_node_removed_while_its_agent_was_down_is_told_when_it_comes_back(mesh: Mesh) -> None:
    """Issue 8.10: the removal must last. Its credential is answered 410 (not 401, on which an agent
    keeps its peers and retries forever), so the agent started from its cache takes the peers down."""
    for name in ("alpha", "beta"):
        await mesh.start(name)
    await wait_for("two hosts meshed", lambda: full_mesh(mesh, ["alpha", "beta"]), mesh)
    await mesh.stop("beta")
    await mesh.remove("beta")
    beta = await mesh.start("beta")
    await wait_for("beta's agent to stop", lambda: beta.task is not None and beta.task.done(), mesh)
    assert beta.agent is not None and beta.agent.stopped is not None
    assert beta.agent.stopped.exit_code == EXIT_REMOVED
    assert beta.backend.read("wg0").peers == {} and beta.host_network.forward["wg0"] is False
    assert beta.log().count("event=node_removed") == 1 and "event=controller_rejected" not in beta.log()


async def test_controller_away_agents_run_from_cache_then_reconnect(mesh: Mesh) -> None:
    names = ["alpha", "beta", "gamma"]
    for name in names:
        await mesh.start(name)
    await wait_for("a full mesh of three", lambda: full_mesh(mesh, names), mesh)
    for name in names:
        await mesh.stop(name)

    mesh.transport.down = True
    alpha = await mesh.start("alpha", enroll=False)  # a restart while the controller is down
    assert full_mesh(mesh, names), "the data plane changed while the controller was away"
    await wait_for("alpha disconnected", lambda: alpha.status().controller == "disconnected", mesh)
    assert alpha.status().netmap_source == "cache"
    await wait_for("alpha to retry several times", lambda: retries(alpha) >= 4, mesh)
    assert alpha.log().count("event=controller_disconnected") == 1

    mesh.transport.down = False
    await wait_for(
        "alpha reconnected with a fresh map",
        lambda: (alpha.status().controller, alpha.status().netmap_source) == ("connected", "controller"),
        mesh,
    )
    assert alpha.log().count("event=controller_reconnected") == 1


async def test_a_restart_changes_nothing(mesh: Mesh) -> None:
    names = ["alpha", "beta", "gamma"]
    for name in names:
        await mesh.start(name)
    await wait_for("a full mesh of three", lambda: full_mesh(mesh, names), mesh)
    alpha = mesh.hosts["alpha"]
    await mesh.stop("alpha")
    applied = len(alpha.backend.history("wg0"))
    first_log = alpha.log()

    await mesh.start("alpha", enroll=False)
    await wait_for("alpha connected again", lambda: alpha.status().controller == "connected", mesh)
    rounds = alpha.prober.rounds
    await wait_for("a few more link rounds", lambda: alpha.prober.rounds >= rounds + 3, mesh)
    assert len(alpha.backend.history("wg0")) == applied
    restart_log = alpha.log()[len(first_log) :]
    assert "changes=0" in restart_log
    assert "event=peer_" not in restart_log and "host_network_changed" not in restart_log


async def test_no_log_line_shows_a_secret(mesh: Mesh) -> None:
    for name in ("alpha", "beta"):
        await mesh.start(name)
    await wait_for("two hosts meshed", lambda: full_mesh(mesh, ["alpha", "beta"]), mesh)
    await mesh.remove("beta")
    await wait_for("beta removed", lambda: "event=node_removed" in mesh.hosts["beta"].log(), mesh)
    logs = mesh.all_logs()
    secrets = [mesh.preauth_key, mesh.admin]
    for h in mesh.hosts.values():
        keys = load_keys(h.state_dir)
        secrets += [
            keys.wireguard.base64(),
            keys.wireguard.hex(),
            keys.identity.base64(),
            keys.identity.hex(),
        ]
        secrets.append(StatePaths(h.state_dir).credential.read_text().strip())
    assert "event=enrolled" in logs and "event=peer_added" in logs
    for secret in secrets:
        assert secret not in logs


async def test_a_refused_apply_is_logged_once_and_retried_until_it_works(mesh: Mesh) -> None:
    for name in ("alpha", "beta"):
        await mesh.start(name)
    await wait_for("two hosts meshed", lambda: full_mesh(mesh, ["alpha", "beta"]), mesh)
    alpha = mesh.hosts["alpha"]
    alpha.host_network.broken = True

    await mesh.start("gamma")  # alpha gets a new map it cannot apply
    # the device part goes through and says so; the host network part is what fails (the first failed
    # map may be an earlier one, without gamma: gamma's comes with it or at the next retry)
    await wait_for(
        "alpha to add gamma and report the error",
        lambda: alpha.status().last_error is not None and "event=peer_added peer=gamma" in alpha.log(),
        mesh,
    )
    assert alpha.status().last_error == "[Errno 1] Operation not permitted"
    calls, rounds = alpha.host_network.calls, alpha.prober.rounds
    await wait_for("several link rounds", lambda: alpha.prober.rounds >= rounds + 5, mesh)
    # retried once per link round (and once per new map), not in a loop against the controller,
    # which would make hundreds of attempts in this time
    assert alpha.host_network.calls - calls <= 2 * (alpha.prober.rounds - rounds) + 4
    assert alpha.log().count("event=apply_failed") == 1

    alpha.host_network.broken = False
    await wait_for("the map applied after the repair", lambda: alpha.status().last_error is None, mesh)
    await wait_for("gamma on alpha", lambda: full_mesh(mesh, ["alpha", "beta", "gamma"]), mesh)
    assert [str(a) for a in alpha.host_network.addresses["wg0"]] == [f"{alpha.status().tunnel_address}/16"]
