"""Two hosts, configured only through the library (a backend + hostnet), talk over a real
WireGuard tunnel, on each backend of the `wg_backend` parameter (kernel: in the tests/kernel VM): handshake, ping both ways, idempotent re-apply that keeps the session, the real `wg`
agreeing with what the backend reads, an agent restart that attaches, and a removed peer cutting traffic.

Underlay 198.18.250.0/24 on a veth pair; tunnel addresses 198.19.250.1 and .2 (/32 each, so the route
to the peer is one that hostnet must install).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_interface, ip_network

import pytest

from agent.backends.userspace import UserspaceBackend
from agent.device import DeviceConfig, PeerConfig
from agent.hostnet.netlink import configure_interface, read_interface
from agent.reconcile import PeerRemoved, diff
from keys.types import WireGuardPrivateKey
from tests.netns.harness import WG_IF, Host, Namespaces, ping
from tests.support import wait_until

pytestmark = pytest.mark.kernel_tier

PORT = 51820
HANDSHAKE_TIMEOUT_S = 30


@dataclass
class Side:
    host: Host
    key: WireGuardPrivateKey
    tunnel: str

    def desired(self, other: Side, with_peer: bool = True) -> DeviceConfig:
        peers = []
        if with_peer:
            peers.append(
                PeerConfig(
                    other.key.public_key(),
                    (ip_network(f"{other.tunnel}/32"),),
                    endpoint=f"{other.host.underlay}:{PORT}",
                    persistent_keepalive=25,
                )
            )
        return DeviceConfig.build(self.key, peers, listen_port=PORT)

    def apply(self, desired: DeviceConfig) -> list[str]:
        """What the agent does: read, diff, apply the difference; then the host side."""
        backend = self.host.backend
        backend.create(WG_IF)
        rec = diff(backend.read(WG_IF), desired)
        backend.apply(WG_IF, rec.update)
        peer_routes = [p.allowed_ips[0] for p in desired.peers.values()]
        host = configure_interface(
            WG_IF, [ip_interface(f"{self.tunnel}/32")], peer_routes, netns=self.host.ns
        )
        return [str(c) for c in rec.changes] + host

    def handshake(self) -> float | None:
        peers = self.host.backend.read(WG_IF).peers
        return next(iter(peers.values())).last_handshake if peers else None


def test_two_hosts_over_the_library(two_hosts: tuple[Host, Host], namespaces: Namespaces) -> None:
    a = Side(two_hosts[0], WireGuardPrivateKey.generate(), "198.19.250.1")
    b = Side(two_hosts[1], WireGuardPrivateKey.generate(), "198.19.250.2")

    first_a = a.apply(a.desired(b))
    first_b = b.apply(b.desired(a))
    assert any(c.startswith("private key set") for c in first_a)
    assert f"{WG_IF}: route 198.19.250.2/32 added" in first_a
    assert f"{WG_IF}: address 198.19.250.1/32 added" in first_a
    assert any(c.startswith("peer ") and "added" in c for c in first_b)

    wait_until("a handshake on both sides", lambda: a.handshake() and b.handshake(), HANDSHAKE_TIMEOUT_S)
    assert ping(a.host.ns, b.tunnel, count=2), "198.19.250.1 cannot ping 198.19.250.2 over the tunnel"
    assert ping(b.host.ns, a.tunnel, count=2), "198.19.250.2 cannot ping 198.19.250.1 over the tunnel"

    # The same desired state again: no change anywhere, the session and its handshake survive.
    before = a.host.backend.read(WG_IF)
    assert a.apply(a.desired(b)) == []
    assert b.apply(b.desired(a)) == []
    after = a.host.backend.read(WG_IF)
    peer = b.key.public_key()
    assert after.peers[peer].last_handshake == before.peers[peer].last_handshake
    assert after.peers[peer].tx_bytes >= before.peers[peer].tx_bytes
    assert read_interface(WG_IF, netns=a.host.ns).up

    # The real `wg`, run where wireguard-go runs, sees what the backend reads.
    dump = a.host.wg("show", WG_IF, "dump").splitlines()
    private, public, listen_port, fwmark = dump[0].split("\t")
    assert (private, public, listen_port, fwmark) == (
        a.key.base64(),
        a.key.public_key().base64(),
        str(PORT),
        "off",
    )
    fields = dump[1].split("\t")
    assert fields[0] == peer.base64()
    assert fields[1] == "(none)"  # preshared key
    assert fields[2] == after.peers[peer].config.endpoint == f"{b.host.underlay}:{PORT}"
    assert fields[3] == f"{b.tunnel}/32"
    assert int(fields[4]) == int(after.peers[peer].last_handshake or 0)
    assert fields[7] == "25"

    # An agent restart: a new backend object attaches to the running interface (userspace: the
    # same wireguard-go process, found through the same run dir).
    restarted = namespaces.wg_backend(a.host.ns)
    restarted.create(WG_IF)
    if isinstance(restarted, UserspaceBackend) and isinstance(a.host.backend, UserspaceBackend):
        assert restarted.pid(WG_IF) == a.host.backend.pid(WG_IF)
    assert restarted.read(WG_IF).peers[peer].last_handshake == after.peers[peer].last_handshake

    # Removing the peer cuts the tunnel both ways.
    rec = diff(a.host.backend.read(WG_IF), a.desired(b, with_peer=False))
    assert [type(c) for c in rec.changes] == [PeerRemoved]
    a.host.backend.apply(WG_IF, rec.update)
    assert a.host.backend.read(WG_IF).peers == {}
    assert not ping(a.host.ns, b.tunnel), "a removed peer still answers"
    assert not ping(b.host.ns, a.tunnel), "a host still reaches a peer that removed it"
