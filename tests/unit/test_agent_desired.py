"""From a network map to the desired device, addresses, routes and forwarding (agent/desired.py)."""

from __future__ import annotations

from ipaddress import ip_address, ip_interface, ip_network

from agent.desired import build_desired, direct_peers, name_endpoints, peer_routes
from keys.types import IdentityPrivateKey, WireGuardPrivateKey
from wire.models import NetMap, Peer, Route, SelfNode

PRIVATE = WireGuardPrivateKey.generate()
KEYS = {n: WireGuardPrivateKey.generate().public_key() for n in (2, 3, 4)}
NAMES = {2: "beta", 3: "gamma", 4: "delta"}


def addr(n):
    return ip_address(f"10.99.0.{n}")


def net(n):
    return ip_network(f"10.99.0.{n}/32")


def peer(n, allowed, endpoints=None, keepalive=None):
    return Peer(
        node_id=n,
        name=NAMES[n],
        role="node",
        wg_public_key=KEYS[n],
        identity_public_key=IdentityPrivateKey.generate().public_key(),
        tunnel_address=addr(n),
        endpoints=[f"198.18.0.{n}:51820"] if endpoints is None else endpoints,
        allowed_ips=[net(a) for a in allowed],
        persistent_keepalive=keepalive,
    )


def netmap(peers, routes, forward=False, serial=1):
    return NetMap(
        serial=serial,
        node=SelfNode(
            node_id=1,
            name="alpha",
            role="node",
            tunnel_address=addr(1),
            mesh_cidr=ip_network("10.99.0.0/16"),
            listen_port=51999,
        ),
        peers=peers,
        routes=[Route(destination=d, destination_address=addr(d), via=v) for d, v in routes],
        forward=forward,
    )


def allowed_by_name(desired):
    names = {KEYS[n]: NAMES[n] for n in KEYS}
    return {names[k]: [str(ip) for ip in p.allowed_ips] for k, p in desired.device.peers.items()}


def test_full_mesh_gives_each_peer_its_own_address():
    m = netmap([peer(2, [2]), peer(3, [3])], [(2, 2), (3, 3)])
    desired = build_desired(m, PRIVATE)
    assert allowed_by_name(desired) == {"beta": ["10.99.0.2/32"], "gamma": ["10.99.0.3/32"]}
    assert desired.device.private_key == PRIVATE
    assert desired.device.listen_port == 51999
    assert desired.device.peers[KEYS[2]].endpoint == "198.18.0.2:51820"
    assert desired.addresses == (ip_interface("10.99.0.1/16"),)
    assert desired.routes == (ip_network("10.99.0.0/16"),)
    assert desired.forward is False


def test_a_relay_route_moves_the_destination_address_to_the_relay():
    direct = build_desired(netmap([peer(2, [2]), peer(3, [3])], [(2, 2), (3, 3)]), PRIVATE)
    relayed = build_desired(netmap([peer(2, [2, 3]), peer(3, [])], [(2, 2), (3, 2)], serial=2), PRIVATE)
    assert allowed_by_name(direct)["gamma"] == ["10.99.0.3/32"]
    assert allowed_by_name(relayed) == {"beta": ["10.99.0.2/32", "10.99.0.3/32"], "gamma": []}
    # gamma stays configured (endpoint kept) so a handshake can prove the direct link is back
    assert relayed.device.peers[KEYS[3]].endpoint == "198.18.0.3:51820"


def test_an_address_listed_under_two_peers_goes_where_the_route_says_whatever_the_order():
    routes = [(2, 2), (3, 2)]
    a = build_desired(netmap([peer(2, [2, 3]), peer(3, [3])], routes), PRIVATE)
    b = build_desired(netmap([peer(3, [3]), peer(2, [3, 2])], routes), PRIVATE)
    assert allowed_by_name(a) == allowed_by_name(b) == {"beta": ["10.99.0.2/32", "10.99.0.3/32"], "gamma": []}


def test_own_address_is_never_given_to_a_peer():
    desired = build_desired(netmap([peer(2, [2, 1])], [(2, 2)]), PRIVATE)
    assert allowed_by_name(desired) == {"beta": ["10.99.0.2/32"]}


def test_relay_node_forwards_and_peers_without_endpoint_wait_to_be_called():
    desired = build_desired(
        netmap([peer(2, [2], endpoints=[], keepalive=25)], [(2, 2)], forward=True), PRIVATE
    )
    assert desired.forward is True
    cfg = desired.device.peers[KEYS[2]]
    assert cfg.endpoint is None
    assert cfg.persistent_keepalive == 25


def test_route_view_names_the_relay_and_only_direct_peers_are_probed():
    m = netmap([peer(2, [2, 3]), peer(3, []), peer(4, [])], [(2, 2), (3, 2)])
    routes = peer_routes(m)
    assert routes[2].kind == "direct"
    assert routes[3].kind == "relay"
    assert routes[3].via is not None and routes[3].via.name == "beta"
    assert routes[4].kind == "none"
    assert [p.name for p in direct_peers(m)] == ["beta"]


def test_a_peer_without_a_route_entry_is_reached_by_whoever_holds_its_address():
    m = netmap([peer(2, [2, 3]), peer(3, [])], [])
    routes = peer_routes(m)
    assert (routes[2].kind, routes[3].kind) == ("direct", "relay")


def test_host_name_endpoints_use_what_the_caller_resolved():
    m = netmap(
        [
            peer(2, [2], endpoints=["gone.example:51820", "b.example:51820"]),
            peer(3, [3], endpoints=["c.example:1"]),
        ],
        [],
    )
    assert name_endpoints(m) == ["b.example:51820", "c.example:1", "gone.example:51820"]
    desired = build_desired(
        m, PRIVATE, {"gone.example:51820": None, "b.example:51820": "198.18.0.22:51820", "c.example:1": None}
    )
    assert desired.device.peers[KEYS[2]].endpoint == "198.18.0.22:51820"
    assert desired.device.peers[KEYS[3]].endpoint is None
