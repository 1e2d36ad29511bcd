"""The agent without its controller: it starts from the cached map, keeps the data plane, logs the
outage once, measures direct links only, and a restart changes nothing on the interface."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime
from ipaddress import ip_address, ip_network

import httpx

from agent.backends.fake import FakeBackend
from agent.backoff import RetryBackoff
from agent.daemon import Agent, AgentEdges, AgentSettings
from agent.eventlog import EventLog
from agent.hostnet.fake import FakeHostNetwork
from agent.links import ProbeResult
from agent.state import AgentState, StatePaths, load_or_create_keys, save_credential, save_netmap
from agent.status import AgentStatus
from keys.types import IdentityPrivateKey, WireGuardPrivateKey
from p2p.directory import load_directory
from tests.support import eventually, finished
from wire.models import NetMap, Peer, Route, SelfNode

CREDENTIAL = "wgm_node_credential_offline_1234"


class RecordingProber:
    """Answers every probe with 2 ms and no loss, and remembers whom it was asked to probe."""

    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    async def probe(self, targets):
        self.asked.append(sorted(str(t) for t in targets))
        return {t: ProbeResult(sent=3, received=3, rtt_ms=2.0) for t in targets}


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def peer(n: int, allowed: list[int]) -> Peer:
    return Peer(
        node_id=n,
        name=f"host{n}",
        role="node",
        wg_public_key=WireGuardPrivateKey.generate().public_key(),
        identity_public_key=IdentityPrivateKey.generate().public_key(),
        tunnel_address=ip_address(f"10.99.0.{n}"),
        endpoints=[f"198.18.0.{n}:51820"],
        allowed_ips=[ip_network(f"10.99.0.{a}/32") for a in allowed],
    )


def enrolled_state_dir(path) -> NetMap:
    """A state dir as a first start leaves it, with a cached map: host2 direct, host3 via host2."""
    load_or_create_keys(path)
    save_credential(path, CREDENTIAL)
    AgentState(
        node_id=1,
        name="host1",
        tunnel_address=ip_address("10.99.0.1"),
        mesh_cidr=ip_network("10.99.0.0/16"),
        controller_url="http://198.18.0.250:8080",
        interface="wg0",
        backend="fake",
        listen_port=51820,
        enrolled_at=datetime(2026, 11, 24, tzinfo=UTC),
    ).save(path)
    netmap = NetMap(
        serial=9,
        node=SelfNode(
            node_id=1,
            name="host1",
            role="node",
            tunnel_address=ip_address("10.99.0.1"),
            mesh_cidr=ip_network("10.99.0.0/16"),
            listen_port=51820,
        ),
        peers=[peer(2, [2, 3]), peer(3, [])],
        routes=[
            Route(destination=2, destination_address=ip_address("10.99.0.2"), via=2),
            Route(destination=3, destination_address=ip_address("10.99.0.3"), via=2),
        ],
        forward=False,
    )
    save_netmap(path, netmap)
    return netmap


def make_agent(state_dir, backend, out, prober=None, host_network=None):
    edges = AgentEdges(
        backend=backend,
        host_network=host_network or FakeHostNetwork(),
        prober=prober or RecordingProber(),
        log=EventLog(out),
        transport=httpx.MockTransport(refuse),
        backoff=RetryBackoff(initial_s=0.01, max_s=0.05),
    )
    settings = AgentSettings(
        state_dir=state_dir, probe_interval_s=0.05, poll_timeout_s=1, direct_probes=False
    )
    return Agent(settings, edges)


async def test_starts_from_the_cached_map_and_logs_the_outage_once(tmp_path):
    netmap = enrolled_state_dir(tmp_path)
    backend, out = FakeBackend(), io.StringIO()
    agent = make_agent(tmp_path, backend, out)
    await agent.start()
    device = backend.read("wg0")
    assert {p.public_key for p in device.config().peers.values()} == {p.wg_public_key for p in netmap.peers}
    by_key = {p.wg_public_key: p.name for p in netmap.peers}
    allowed = {by_key[k]: [str(n) for n in p.config.allowed_ips] for k, p in device.peers.items()}
    assert allowed == {"host2": ["10.99.0.2/32", "10.99.0.3/32"], "host3": []}

    stop = asyncio.Event()
    serving = asyncio.create_task(agent.serve(stop))
    # many retries happen (backoff tops out at 50 ms); the outage is still one line
    await eventually("a few link rounds", lambda: len(agent.edges.prober.asked) >= 4)
    stop.set()
    await finished(serving, "the agent")
    await agent.shutdown()

    log = out.getvalue()
    assert log.count("event=controller_disconnected") == 1
    assert 'note="running from the cached map; retrying with backoff"' in log
    status = AgentStatus.load(StatePaths(tmp_path).status)
    directory = load_directory(StatePaths(tmp_path).p2p_directory)
    assert (directory.serial, sorted(e.name for e in directory)) == (9, ["host2", "host3"])
    assert directory.own.identity_public_key == load_or_create_keys(tmp_path)[0].identity.public_key()
    assert (status.controller, status.netmap_source, status.serial, status.running) == (
        "disconnected",
        "cache",
        9,
        False,
    )
    assert backend.exists("wg0"), "stopping the agent leaves the interface up"


async def test_relayed_peers_report_only_their_handshake_age(tmp_path):
    netmap = enrolled_state_dir(tmp_path)
    backend, out = FakeBackend(), io.StringIO()
    prober = RecordingProber()
    agent = make_agent(tmp_path, backend, out, prober)
    await agent.start()
    host3 = netmap.peers[1].wg_public_key
    backend.handshake("wg0", host3)

    report = await agent.measure()

    assert prober.asked == [["10.99.0.2"]], "only the directly routed peer is probed"
    by_peer = {m.peer_id: m for m in report.measurements}
    assert (by_peer[2].rtt_ms, by_peer[2].loss, by_peer[2].handshake_age_s) == (2.0, 0.0, None)
    assert (by_peer[3].rtt_ms, by_peer[3].loss) == (None, None)
    assert by_peer[3].handshake_age_s is not None and 0 <= by_peer[3].handshake_age_s < 5
    view = agent.build_status().peer("host3")
    assert view is not None and (view.route, view.via) == ("relay", "host2")
    await agent.shutdown()


async def test_a_restart_applies_nothing_and_keeps_sessions(tmp_path):
    enrolled_state_dir(tmp_path)
    # the interface, its addresses and routes outlive the agent process
    backend, host_network = FakeBackend(), FakeHostNetwork()
    first = make_agent(tmp_path, backend, io.StringIO(), host_network=host_network)
    await first.start()
    await first.shutdown()
    key = next(iter(backend.read("wg0").peers))
    backend.handshake("wg0", key)
    before = backend.read("wg0").peers[key].last_handshake
    updates = len(backend.history("wg0"))

    out = io.StringIO()
    second = make_agent(tmp_path, backend, out, host_network=host_network)
    await second.start()
    await second.shutdown()

    assert len(backend.history("wg0")) == updates, "the restart applied an update"
    assert backend.read("wg0").peers[key].last_handshake == before
    assert "event=peer_" not in out.getvalue()
    assert "event=netmap_applied serial=9 source=cache peers=2 changes=0" in out.getvalue()


async def test_the_log_never_shows_a_secret(tmp_path):
    enrolled_state_dir(tmp_path)
    out = io.StringIO()
    agent = make_agent(tmp_path, FakeBackend(), out)
    await agent.start()
    stop = asyncio.Event()
    serving = asyncio.create_task(agent.serve(stop))
    await eventually("a link round", lambda: len(agent.edges.prober.asked) >= 2)
    stop.set()
    await finished(serving, "the agent")
    await agent.shutdown()
    keys = load_or_create_keys(tmp_path)[0]
    log = out.getvalue()
    assert "event=started" in log
    for secret in (keys.wireguard.base64(), keys.wireguard.hex(), keys.identity.base64(), CREDENTIAL):
        assert secret not in log


class ExplodingProber:
    """A prober with a bug: every round raises something no one expects."""

    def __init__(self) -> None:
        self.calls = 0

    async def probe(self, targets):
        self.calls += 1
        raise ZeroDivisionError("division by zero")


async def test_a_loop_that_hits_a_bug_is_logged_once_and_restarted(tmp_path):
    enrolled_state_dir(tmp_path)
    out, prober = io.StringIO(), ExplodingProber()
    agent = make_agent(tmp_path, FakeBackend(), out, prober)
    await agent.start()
    stop = asyncio.Event()
    serving = asyncio.create_task(agent.serve(stop))
    await eventually("the link loop to be restarted twice", lambda: prober.calls >= 3)
    assert not serving.done(), "the agent stopped serving"
    stop.set()
    await finished(serving, "the agent")
    await agent.shutdown()
    lines = [line for line in out.getvalue().splitlines() if "event=internal_error" in line]
    assert len(lines) == 1
    assert 'loop=links error="ZeroDivisionError: division by zero" note="restarting the loop"' in lines[0]
