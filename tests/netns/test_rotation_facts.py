"""The WireGuard facts key rotation is built on, checked on a real implementation: two namespaces
(`wgr*`), node N rotates, peer P swaps. On the `wg_backend` of the run: userspace (wireguard-go) here,
the kernel module inside the VM of tests/kernel (the module is `kernel_tier`).

- N's new private key stops N sending on its sessions; what N sends is staged and arrives once a
  handshake completes (P's swap with a keepalive starts it at once, well before a 5 s retry);
- N still receives on its old sessions after the switch;
- at most 128 packets (the kernel: 129) are staged per peer; beyond that the oldest are dropped;
- the swap on P moves N's allowed IPs to the new peer and removes the old one;
- with the protocol (notice, N switches, P swaps), a ping each way every 10 ms loses nothing.

Underlay 198.18.252.1/.2 on a veth; tunnel 198.19.252.1 (N) and .2 (P).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import ip_network
from pathlib import Path

import pytest

from agent.backends import Backend, BackendUnavailable, open_backend
from agent.device import DeviceConfig, KeySwitch, PeerConfig, PeerSwap
from agent.reconcile import diff
from keys.types import WireGuardPrivateKey, WireGuardPublicKey
from tests.netns.harness import in_ns, run
from tests.support import wait_until

pytestmark = pytest.mark.kernel_tier
WG = "wgrwg"
PORT = 51820
KEEPALIVE = 25


@dataclass
class Node:
    ns: str
    backend: Backend
    key: WireGuardPrivateKey
    underlay: str
    tunnel: str

    def peer_config(self, keepalive: int | None = KEEPALIVE) -> PeerConfig:
        return PeerConfig(
            self.key.public_key(),
            (ip_network(f"{self.tunnel}/32"),),
            endpoint=f"{self.underlay}:{PORT}",
            persistent_keepalive=keepalive,
        )

    def handshake_with(self, key: WireGuardPublicKey) -> float | None:
        peer = self.backend.read(WG).peers.get(key)
        return peer.last_handshake if peer is not None else None


def _delete_ns(name: str) -> None:
    if Path("/run/netns", name).exists():
        run("ip", "netns", "del", name, check=False)


@pytest.fixture
def pair(wg_backend: str, tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    """N (wgrfn) and P (wgrfp), configured as peers with a completed handshake."""
    names = ("wgrfn", "wgrfp")
    backends: list[Backend] = []
    try:
        nodes = []
        for i, ns in enumerate(names, start=1):
            _delete_ns(ns)
            run("ip", "netns", "add", ns)
            in_ns(ns, "ip", "link", "set", "lo", "up")
            run_dir = tmp_path / ns
            run_dir.mkdir(mode=0o700)
            try:
                backend = open_backend(wg_backend, netns=ns, run_dir=run_dir)
            except BackendUnavailable as e:
                pytest.skip(f"{wg_backend} backend: {e}")
            backends.append(backend)
            nodes.append(
                Node(ns, backend, WireGuardPrivateKey.generate(), f"198.18.252.{i}", f"198.19.252.{i}")
            )
        n, p = nodes
        run("ip", "link", "add", "wgrfvn", "netns", n.ns, "type", "veth", "peer", "wgrfvp", "netns", p.ns)
        for node, dev in ((n, "wgrfvn"), (p, "wgrfvp")):
            run("ip", "-n", node.ns, "addr", "add", f"{node.underlay}/24", "dev", dev)
            run("ip", "-n", node.ns, "link", "set", dev, "up")
        for node, other in ((n, p), (p, n)):
            node.backend.create(WG)
            desired = DeviceConfig.build(node.key, [other.peer_config()], listen_port=PORT)
            node.backend.apply(WG, diff(node.backend.read(WG), desired).update)
            run("ip", "-n", node.ns, "addr", "add", f"{node.tunnel}/32", "dev", WG)
            run("ip", "-n", node.ns, "link", "set", WG, "up")
            run("ip", "-n", node.ns, "route", "add", f"{other.tunnel}/32", "dev", WG)
        ping_once(p, n)
        wait_until("the first handshake", lambda: n.handshake_with(p.key.public_key()), 15)
        yield n, p
    finally:
        for backend in backends:
            with contextlib.suppress(Exception):
                backend.delete(WG)
        for ns in names:
            _delete_ns(ns)


def ping_once(src: Node, dst: Node) -> None:
    wait_until(
        f"{dst.tunnel} to answer from {src.ns}",
        lambda: (
            in_ns(src.ns, "ping", "-n", "-q", "-c", "1", "-W", "1", dst.tunnel, check=False).returncode == 0
        ),
        15,
    )


def switch(n: Node, kick: tuple[tuple[WireGuardPublicKey, int], ...] = ()) -> WireGuardPrivateKey:
    """N takes a new private key; returns the old one."""
    old, n.key = n.key, WireGuardPrivateKey.generate()
    n.backend.switch_key(WG, KeySwitch(n.key, kick))
    return old


def swap(p: Node, n: Node, old: WireGuardPublicKey) -> None:
    """P swaps N's old key for the new one, with the live endpoint and a keepalive."""
    live = p.backend.read(WG).peers[old].config
    new = PeerConfig(
        n.key.public_key(), live.allowed_ips, endpoint=live.endpoint, persistent_keepalive=KEEPALIVE
    )
    p.backend.swap_peer(WG, PeerSwap(old, new))


UDP_SINK = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 40000))
last, deadline = int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
print("ready", flush=True)
got = []
while not got or got[-1] != last:
    s.settimeout(max(deadline - time.monotonic(), 0.001))
    try:
        got.append(int(s.recv(64)))
    except TimeoutError:
        break
print(" ".join(map(str, got)), flush=True)
"""

UDP_SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[2])):
    s.sendto(str(i).encode(), (sys.argv[1], 40000))
"""


def start_sink(node: Node, last: int, deadline_s: float = 30.0) -> subprocess.Popen[str]:
    """A UDP sink on `node` that collects numbered datagrams until `last` arrives (they arrive in order)
    or `deadline_s` passes: no guess of how long the sender, a new Python, takes to start."""
    sink = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            node.ns,
            sys.executable,
            "-c",
            UDP_SINK,
            node.tunnel,
            str(last),
            str(deadline_s),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
    return sink


def send(src: Node, dst: Node, count: int) -> None:
    in_ns(src.ns, sys.executable, "-c", UDP_SEND, dst.tunnel, str(count))


def received(sink: subprocess.Popen[str]) -> list[int]:
    out, _ = sink.communicate(timeout=60)
    return [int(x) for x in out.split()]


def test_a_switched_node_stages_what_it_sends_and_delivers_it_after_the_peers_swap(pair) -> None:  # type: ignore[no-untyped-def]
    n, p = pair
    sink = start_sink(p, last=99)
    old = switch(n)
    send(n, p, 100)  # staged on N: its sessions no longer send, P does not know the new key yet
    swap(p, n, old.public_key())
    assert received(sink) == list(range(100))  # all, in order, after the handshake P's keepalive started


def test_a_switched_node_still_receives_on_its_old_sessions(pair) -> None:  # type: ignore[no-untyped-def]
    n, p = pair
    sink = start_sink(n, last=19)
    switch(n)
    send(p, n, 20)  # P still sends on the old session; N can still decrypt it
    assert received(sink) == list(range(20))


def test_at_most_128_packets_are_staged_and_the_oldest_are_dropped(pair, wg_backend: str) -> None:  # type: ignore[no-untyped-def]
    n, p = pair
    sink = start_sink(p, last=299)
    old = switch(n)
    send(n, p, 300)
    swap(p, n, old.public_key())
    # wireguard-go keeps 128; the kernel trims its queue to 128 *before* adding a packet (device.c,
    # wg_xmit), so it holds 129 (found by this test in the VM tier). Either way the newest are kept.
    kept = 129 if wg_backend == "kernel" else 128
    assert received(sink) == list(range(300 - kept, 300))


def test_the_swap_moves_the_allowed_ips_and_the_keepalive_starts_the_handshake_at_once(pair) -> None:  # type: ignore[no-untyped-def]
    n, p = pair
    old = switch(n)
    swap(p, n, old.public_key())
    peers = p.backend.read(WG).peers
    assert set(peers) == {n.key.public_key()}
    assert peers[n.key.public_key()].config.allowed_ips == (ip_network(f"{n.tunnel}/32"),)
    assert peers[n.key.public_key()].config.endpoint == f"{n.underlay}:{PORT}"
    # No traffic at all: only the keepalive 0 -> 25 of the swap can start this handshake. It usually
    # completes at once; when it crosses N's own first initiation (made at its switch, dropped by P, which
    # did not know the key yet) it was seen to take one 5 s retry, so the deadline allows one.
    wait_until("a handshake on the new key", lambda: p.handshake_with(n.key.public_key()), 12)


def test_rotation_by_the_protocol_loses_no_ping_in_either_direction(pair) -> None:  # type: ignore[no-untyped-def]
    n, p = pair
    pings = [
        subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                src.ns,
                "ping",
                "-n",
                "-q",
                "-i",
                "0.01",
                "-c",
                "300",
                "-W",
                "5",
                dst.tunnel,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for src, dst in ((n, p), (p, n))
    ]
    time.sleep(1.0)  # the rotation happens in the middle of the pings
    old = switch(n, kick=((p.key.public_key(), KEEPALIVE),))
    swap(p, n, old.public_key())
    for proc in pings:
        out, _ = proc.communicate(timeout=60)
        assert " 0% packet loss" in out, out
    assert set(p.backend.read(WG).peers) == {n.key.public_key()}
