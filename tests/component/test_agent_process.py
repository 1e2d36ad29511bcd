"""`wgmesh agent up` as a real process with the userspace backend (wireguard-go), two hosts in network
namespaces of our own (prefix wga4), each started from a cached map with no controller reachable:
the tunnel comes up and carries pings, SIGTERM leaves the interface up, a restart changes nothing and
keeps the session, `down` refuses while the agent runs and removes the interface after."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from agent.state import AgentState, load_or_create_keys, save_credential, save_netmap
from agent.status import AgentStatus, StatusError
from tests.support import installed_wgmesh, wait_until
from wire.models import NetMap, Peer, Route, SelfNode

pytestmark = pytest.mark.root


@dataclass
class Host:
    n: int
    netns: str
    state_dir: Path
    run_dir: Path
    log: Path
    agent: subprocess.Popen[bytes] | None = None

    def in_host(self, command: str) -> list[str]:
        """`command` inside this host: its network namespace and its own /run/wireguard."""
        mount = f"mkdir -p /run/wireguard && mount --bind {self.run_dir} /run/wireguard && exec {command}"
        return [
            "ip",
            "netns",
            "exec",
            self.netns,
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            mount,
        ]

    def start(self, *extra: str) -> None:
        cmd = f"{installed_wgmesh()} agent up --backend userspace --state-dir {self.state_dir} --probe-interval 0.5 {' '.join(extra)}"
        with self.log.open("ab") as log:
            self.agent = subprocess.Popen(self.in_host(cmd), stdout=log, stderr=log)

    def stop(self) -> int:
        assert self.agent is not None
        self.agent.send_signal(signal.SIGTERM)
        code = self.agent.wait(timeout=20)
        self.agent = None
        return code

    def wgmesh(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = " ".join([installed_wgmesh(), "agent", *args, "--state-dir", str(self.state_dir)])
        return subprocess.run(self.in_host(cmd), capture_output=True, text=True, timeout=30)

    def status(self) -> AgentStatus | None:
        try:
            return AgentStatus.load(self.state_dir / "status.json")
        except StatusError:
            return None

    def live_status(self) -> dict:
        out = self.wgmesh("status", "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def ping(self, address: str) -> bool:
        cmd = ["ip", "netns", "exec", self.netns, "ping", "-c", "1", "-W", "1", address]
        return subprocess.run(cmd, capture_output=True).returncode == 0

    def has_interface(self) -> bool:
        cmd = ["ip", "-n", self.netns, "link", "show", "wg0"]
        return subprocess.run(cmd, capture_output=True).returncode == 0


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def prepare(hosts: list[Host]) -> None:
    """State dirs as enrollment leaves them, plus a cached map: each host's only peer is the other."""
    keys = {h.n: load_or_create_keys(h.state_dir)[0] for h in hosts}
    for h in hosts:
        o = 3 - h.n
        save_credential(h.state_dir, f"wgm_node_cred_{h.n}_0123456789")
        AgentState(
            node_id=h.n,
            name=f"wga4h{h.n}",
            tunnel_address=ip_address(f"10.99.0.{h.n}"),
            mesh_cidr=ip_network("10.99.0.0/16"),
            controller_url="https://127.0.0.1:9",  # loopback of the host: refused at once
            interface="wg0",
            backend="userspace",
            listen_port=51820,
            enrolled_at=datetime.now(UTC),
        ).save(h.state_dir)
        netmap = NetMap(
            serial=1,
            node=SelfNode(
                node_id=h.n,
                name=f"wga4h{h.n}",
                role="node",
                tunnel_address=ip_address(f"10.99.0.{h.n}"),
                mesh_cidr=ip_network("10.99.0.0/16"),
                listen_port=51820,
            ),
            peers=[
                Peer(
                    node_id=o,
                    name=f"wga4h{o}",
                    role="node",
                    wg_public_key=keys[o].wireguard.public_key(),
                    identity_public_key=keys[o].identity.public_key(),
                    tunnel_address=ip_address(f"10.99.0.{o}"),
                    endpoints=[f"198.18.40.{o}:51820"],
                    allowed_ips=[ip_network(f"10.99.0.{o}/32")],
                    persistent_keepalive=25,
                )
            ],
            routes=[Route(destination=o, destination_address=ip_address(f"10.99.0.{o}"), via=o)],
            forward=False,
        )
        save_netmap(h.state_dir, netmap)


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[list[Host]]:
    tag = f"wga4p{os.getpid() % 10000}"
    made = [
        Host(n, f"{tag}-h{n}", tmp_path / f"h{n}", tmp_path / f"run{n}", tmp_path / f"agent{n}.log")
        for n in (1, 2)
    ]
    try:
        for h in made:
            ip("netns", "add", h.netns)
            h.run_dir.mkdir(mode=0o700)
        ip("link", "add", f"{tag}a", "type", "veth", "peer", "name", f"{tag}b")
        for h, end in zip(made, ("a", "b"), strict=True):
            ip("link", "set", f"{tag}{end}", "netns", h.netns)
            ip("-n", h.netns, "addr", "add", f"198.18.40.{h.n}/24", "dev", f"{tag}{end}")
            ip("-n", h.netns, "link", "set", f"{tag}{end}", "up")
            ip("-n", h.netns, "link", "set", "lo", "up")
        prepare(made)
        yield made
    finally:
        for h in made:
            if h.agent is not None:
                h.agent.send_signal(signal.SIGTERM)
                h.agent.wait(timeout=20)
            if h.state_dir.joinpath("node.json").exists():
                h.wgmesh("down")  # ends this host's wireguard-go through its pidfile
            subprocess.run(["ip", "netns", "del", h.netns], capture_output=True)


def test_agent_process_keeps_the_tunnel_across_stop_and_restart(hosts: list[Host]) -> None:
    h1, h2 = hosts
    h1.start()
    h2.start()

    def logs() -> str:
        return "\n".join(f"--- {h.log}\n{h.log.read_text() if h.log.exists() else ''}" for h in hosts)

    wait_until("a ping through the tunnel", lambda: h1.ping("10.99.0.2"), 20, show=logs)
    status = wait_until(
        "status.json with an RTT for the peer",
        lambda: (s := h1.status()) and s.peers and s.peers[0].rtt_ms is not None and s,
        20,
        show=logs,
    )
    assert (status.controller, status.netmap_source, status.serial) == ("disconnected", "cache", 1)
    assert status.peers[0].name == "wga4h2" and status.peers[0].route == "direct"

    table = h1.wgmesh("status")
    assert table.returncode == 0, table.stderr
    assert "wga4h2" in table.stdout and "198.18.40.2:51820" in table.stdout and "direct" in table.stdout

    # SIGTERM: clean exit, the interface and the tunnel stay
    assert h1.stop() == 0
    assert "interface_kept=true" in h1.log.read_text()
    assert h1.has_interface()
    assert h1.ping("10.99.0.2")
    handshake = h1.live_status()["peers"][0]["latest_handshake"]
    assert handshake is not None

    # a restart re-attaches and changes nothing: same session, same handshake
    h1.start()
    wait_until(
        "the restarted agent to apply its cached map",
        lambda: "event=netmap_applied serial=1 source=cache peers=1 changes=0" in h1.log.read_text(),
        20,
        show=logs,
    )
    assert h1.live_status()["peers"][0]["latest_handshake"] == handshake
    assert h1.ping("10.99.0.2")

    # `down` refuses while the agent runs, removes the interface once it stopped
    refused = h1.wgmesh("down")
    assert refused.returncode == 1
    assert "still runs and would bring wg0 back" in refused.stderr
    assert h1.stop() == 0
    removed = h1.wgmesh("down")
    assert removed.returncode == 0 and "removed interface wg0" in removed.stdout
    assert not h1.has_interface()


def test_up_with_down_removes_the_interface_on_stop(hosts: list[Host]) -> None:
    h1, _ = hosts
    h1.start("--down")
    wait_until("wg0 in host 1", h1.has_interface, 20)
    wait_until("the cached map applied", lambda: "event=netmap_applied" in h1.log.read_text(), 20)
    assert h1.stop() == 0
    assert "event=interface_removed" in h1.log.read_text()
    assert not h1.has_interface()
    assert not list(h1.run_dir.glob("*.sock")), "wireguard-go still runs"
