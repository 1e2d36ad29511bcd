"""Link measurements and peer views (agent/links.py): direct links are probed, relayed ones report only
their handshake age; the status view shows the live device where there is one."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

from agent.device import Device, PeerConfig, PeerStatus
from agent.links import ProbeResult, measure_links, peer_views, probe_targets
from keys.types import IdentityPrivateKey, WireGuardPrivateKey
from wire.models import NetMap, Peer, Route, SelfNode

NOW = 1_800_000_000.0
KEYS = {n: WireGuardPrivateKey.generate().public_key() for n in (2, 3)}


def peer(n: int, allowed: list[int]) -> Peer:
    return Peer(
        node_id=n,
        name=f"h{n}",
        role="node",
        wg_public_key=KEYS[n],
        identity_public_key=IdentityPrivateKey.generate().public_key(),
        tunnel_address=ip_address(f"10.99.0.{n}"),
        endpoints=[f"198.18.0.{n}:51820"],
        allowed_ips=[ip_network(f"10.99.0.{a}/32") for a in allowed],
    )


# h2 direct; h3 through h2
NETMAP = NetMap(
    serial=3,
    node=SelfNode(
        node_id=1,
        name="h1",
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

DEVICE = Device(
    name="wg0",
    private_key=None,
    listen_port=51820,
    fwmark=None,
    peers={
        KEYS[2]: PeerStatus(PeerConfig(KEYS[2], endpoint="198.18.9.2:40000"), NOW - 5, 100, 200),
        KEYS[3]: PeerStatus(PeerConfig(KEYS[3]), NOW - 30, 0, 64),
    },
)


def test_only_directly_routed_peers_are_probed():
    assert probe_targets(NETMAP) == [ip_address("10.99.0.2")]


def test_relayed_peer_reports_only_its_handshake_age_even_when_a_probe_answered():
    probes = {
        ip_address("10.99.0.2"): ProbeResult(sent=4, received=3, rtt_ms=1.25),
        ip_address("10.99.0.3"): ProbeResult(sent=4, received=4, rtt_ms=3.0),  # the relayed path
    }
    m = measure_links(NETMAP, DEVICE, probes, NOW)
    assert (m[2].rtt_ms, m[2].loss, m[2].handshake_age_s) == (1.25, 0.25, 5.0)
    assert (m[3].rtt_ms, m[3].loss, m[3].handshake_age_s) == (None, None, 30.0)


def test_a_silent_direct_peer_is_full_loss_and_an_unread_device_has_no_handshakes():
    m = measure_links(
        NETMAP, None, {ip_address("10.99.0.2"): ProbeResult(sent=3, received=0, rtt_ms=None)}, NOW
    )
    assert (m[2].rtt_ms, m[2].loss, m[2].handshake_age_s) == (None, 1.0, None)
    assert m[3].handshake_age_s is None


def test_peer_views_show_live_endpoint_counters_and_the_relay():
    m = measure_links(NETMAP, DEVICE, {ip_address("10.99.0.2"): ProbeResult(3, 3, 0.5)}, NOW)
    h2, h3 = peer_views(NETMAP, DEVICE, m)
    assert (h2.name, h2.endpoint, h2.rx_bytes, h2.tx_bytes, h2.rtt_ms, h2.route, h2.via) == (
        "h2",
        "198.18.9.2:40000",
        100,
        200,
        0.5,
        "direct",
        None,
    )
    assert (h3.name, h3.endpoint, h3.latest_handshake, h3.rtt_ms, h3.route, h3.via) == (
        "h3",
        "198.18.0.3:51820",
        NOW - 30,
        None,
        "relay",
        "h2",
    )


def test_peer_views_without_a_device_use_the_map():
    (h2, h3) = peer_views(NETMAP, None, {})
    assert (h2.endpoint, h2.latest_handshake, h2.rx_bytes) == ("198.18.0.2:51820", None, 0)
    assert h3.via == "h2"


def test_a_relayed_peer_is_probed_on_its_probe_address_over_the_direct_path():
    """Issue 8.6: a relayed pair keeps measuring its direct link, so the controller can route it back."""
    from agent.desired import build_desired, probe_address

    cidr = NETMAP.node.mesh_cidr
    p3 = probe_address(cidr, ip_address("10.99.0.3"))
    assert probe_targets(NETMAP, direct_probes=True) == [ip_address("10.99.0.2"), p3]
    # h3's probe address stays on h3's own peer entry (the direct path), its tunnel address on h2's
    desired = build_desired(NETMAP, WireGuardPrivateKey.generate(), direct_probes=True)
    allowed = {k: set(map(str, p.allowed_ips)) for k, p in desired.device.peers.items()}
    assert allowed[KEYS[3]] == {f"{p3}/128"}
    assert "10.99.0.3/32" in allowed[KEYS[2]] and f"{p3}/128" not in allowed[KEYS[2]]
    own = probe_address(cidr, ip_address("10.99.0.1"))
    assert [str(a) for a in desired.addresses] == ["10.99.0.1/16", f"{own}/64"]
    assert own != p3 and own in desired.routes[1] and p3 in desired.routes[1]
    # a reply through the direct path is a measurement of the direct link...
    m = measure_links(NETMAP, DEVICE, {p3: ProbeResult(3, 2, 7.5)}, NOW, direct_probes=True)
    assert (m[3].rtt_ms, m[3].loss, m[3].handshake_age_s) == (7.5, 1 / 3, 30.0)
    # ...none is no claim at all (a peer without probe addresses answers none)
    m = measure_links(NETMAP, DEVICE, {p3: ProbeResult(3, 0, None)}, NOW, direct_probes=True)
    assert (m[3].rtt_ms, m[3].loss) == (None, None)
    # without direct probes: today's report, the handshake only
    assert probe_targets(NETMAP) == [ip_address("10.99.0.2")]


def test_probe_addresses_are_unique_per_node_and_differ_between_meshes():
    from agent.desired import probe_address, probe_prefix

    a, b = ip_network("198.19.0.0/16"), ip_network("10.8.0.0/16")
    addresses = {probe_address(a, a[i]) for i in range(1, 300)}
    assert len(addresses) == 299 and all(x in probe_prefix(a) for x in addresses)
    assert probe_prefix(a) != probe_prefix(b) and probe_prefix(a).network_address.packed[0] == 0xFD
