"""`wgmesh p2p` between real lab hosts, over the WireGuard tunnel addresses: a direct send, a broadcast
that reaches every listener, and a send that still arrives once the direct underlay path is cut and the
mesh routes through a relay.

Every p2p command runs inside its host (`lab exec`: the host's namespaces and state directory), as a user
would run it. The tests share one lab and run in file order."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, ip_address

import pytest

from lab.instance import Lab
from lab.layout import MESH_CIDR
from lab.observe import ping_once
from lab.processes import wgmesh_argv
from p2p.directory import FILE_NAME, load_directory
from tests.e2e.harness import logs, reachable, running_lab, wait_for_p2p_directories
from tests.support import wait_until

pytestmark = [pytest.mark.root, pytest.mark.scenario]
NAME = "p2pe"
HOSTS = ("h1", "h2", "h3")


@dataclass
class Listener:
    """A `wgmesh p2p listen` running inside a lab host; its stdout lines are collected as they come."""

    host: str
    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self.lock:
                self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        with self.lock:
            return "\n".join(self.lines)

    def received(self, sender: str, type_: str) -> str | None:
        """The line printed for a message of `type_` from host `sender`, if one was printed."""
        with self.lock:
            for line in self.lines:
                if f"({sender})" in line and f"  {type_}  " in line:
                    return line
        return None

    def stop(self) -> None:
        # Ended by its own pid (the exec chain replaces itself, so this is the wgmesh process).
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)


def p2p_argv(lab: Lab, host: str, *args: str) -> list[str]:
    """`wgmesh lab exec HOST -- wgmesh p2p ARGS`: no --state-dir, the host's own state is found."""
    return lab.exec_argv(host, wgmesh_argv("p2p", *args))


def p2p(lab: Lab, host: str, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(p2p_argv(lab, host, *args), capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def listening(lab: Lab, host: str) -> Iterator[Listener]:
    popen = subprocess.Popen(
        p2p_argv(lab, host, "listen"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    listener = Listener(host, popen)
    reader = threading.Thread(target=listener._read, daemon=True)
    reader.start()
    try:
        wait_until(
            f"the p2p listener on {host} to start",
            lambda: "listening on port" in listener.output() or popen.poll() is not None,
            20,
            interval=0.1,
        )
        assert popen.poll() is None, f"`p2p listen` on {host} exited:\n{listener.output()}"
        yield listener
    finally:
        listener.stop()
        reader.join(timeout=5)


def listening_addresses(lab: Lab, host: str) -> set[str]:
    """Local addresses of the TCP sockets listening on the host (from `ss`)."""
    shown = lab.exec(host, ["ss", "-Hltn"])
    assert shown.returncode == 0, shown.stderr
    return {line.split()[3] for line in shown.stdout.splitlines() if line.strip()}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with running_lab(NAME, len(HOSTS)) as lab:
        wait_for_p2p_directories(lab, 30)
        yield lab


@pytest.fixture(scope="module")
def listeners(lab: Lab) -> Iterator[dict[str, Listener]]:
    with listening(lab, "h1") as l1, listening(lab, "h2") as l2:
        yield {"h1": l1, "h2": l2}


def test_the_directory_lists_peers_at_their_tunnel_addresses(lab: Lab):
    directory = load_directory(lab.host("h2").state_dir / FILE_NAME)
    tunnel = lab.tunnel_addresses()
    assert directory.own.name == "h2" and directory.own.address == tunnel["h2"]
    for entry in directory:
        assert isinstance(entry.address, IPv4Address) and entry.address in MESH_CIDR
        assert entry.address == tunnel[entry.name]


def test_a_message_sent_from_h2_is_printed_by_h1s_listener(lab: Lab, listeners: dict[str, Listener]):
    h1 = listeners["h1"]
    # The listener is bound to h1's tunnel address (not the underlay, not 0.0.0.0).
    address = lab.tunnel_addresses(["h1"])["h1"]
    assert any(a.startswith(f"{address}:") for a in listening_addresses(lab, "h1"))

    sent = p2p(lab, "h2", "send", "h1", "greeting", '{"text": "hello h1", "n": 1}')
    assert sent.returncode == 0, f"{sent.stdout}\n{sent.stderr}\n{h1.output()}"
    assert "sent greeting to" in sent.stdout

    line = wait_until(
        "h1's listener to print h2's greeting", lambda: h1.received("h2", "greeting"), 10, show=h1.output
    )
    payload = json.loads(line[line.index("{") :])
    assert payload == {"text": "hello h1", "n": 1}
    assert listeners["h2"].received("h2", "greeting") is None  # a send goes to its target only


def test_a_send_by_node_id_reaches_the_same_listener(lab: Lab, listeners: dict[str, Listener]):
    directory = load_directory(lab.host("h2").state_dir / FILE_NAME)
    h1_id = next(e.node_id for e in directory if e.name == "h1")
    sent = p2p(lab, "h2", "send", str(h1_id), "by-id", "[1, 2, 3]")
    assert sent.returncode == 0, f"{sent.stdout}\n{sent.stderr}"
    wait_until(
        "h1's listener to print the message sent by id",
        lambda: listeners["h1"].received("h2", "by-id"),
        10,
        show=listeners["h1"].output,
    )


def test_a_broadcast_from_h3_reaches_both_listeners(lab: Lab, listeners: dict[str, Listener]):
    sent = p2p(lab, "h3", "broadcast", "announce", '{"from": "h3"}')
    assert sent.returncode == 0, f"{sent.stdout}\n{sent.stderr}"
    assert "broadcast announce" in sent.stdout
    for host in ("h1", "h2"):
        listener = listeners[host]
        line = wait_until(
            f"{host}'s listener to print h3's broadcast",
            lambda lst=listener: lst.received("h3", "announce"),  # type: ignore[misc]
            10,
            show=listener.output,
        )
        assert '{"from":"h3"}' in line


def test_a_send_still_arrives_when_the_direct_path_is_cut(lab: Lab, listeners: dict[str, Listener]):
    h1 = listeners["h1"]
    lab.cut("h1", "h2")
    try:
        assert ping_once(lab.host("h2").namespace, lab.host("h1").underlay_address, 0.5, 1) is None

        def relayed() -> bool:
            status = lab.agent_status("h2")
            peer = status.peer("h1") if status else None
            return peer is not None and peer.route == "relay" and reachable(lab, "h2", "h1")

        wait_until("h2 to reach h1 through a relay", relayed, 45, interval=0.5, show=lambda: logs(lab))
        via = lab.agent_status("h2").peer("h1").via  # type: ignore[union-attr]
        assert via == "h3"

        sent = p2p(lab, "h2", "send", "h1", "relayed", '{"path": "via h3"}')
        assert sent.returncode == 0, f"{sent.stdout}\n{sent.stderr}\n{h1.output()}"
        line = wait_until(
            "h1's listener to print the message sent over the relayed route",
            lambda: h1.received("h2", "relayed"),
            10,
            show=h1.output,
        )
        assert '{"path":"via h3"}' in line
        # The sender is still h2 (authenticated end to end), not the relay.
        assert "(h3)" not in line
        assert ip_address(str(lab.tunnel_addresses(["h1"])["h1"])) in MESH_CIDR
    finally:
        lab.heal("h1", "h2")
