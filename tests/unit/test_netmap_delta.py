"""Network map deltas (wire.delta): applying the delta of two maps to the first gives the second, for
any two maps; a delta names only what changed; a delta for another serial is refused; and a delta
survives the JSON round trip an agent sees."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from keys.types import IdentityPrivateKey, WireGuardPrivateKey
from wire.delta import DeltaMismatch, apply_delta, netmap_delta
from wire.models import NetMap, NetMapDelta, NetMapUpdate, Peer, Route, SelfNode

# A few real keys, drawn from by the strategies (generating keys per example would be slow).
WG_KEYS = [WireGuardPrivateKey.generate().public_key() for _ in range(4)]
ID_KEYS = [IdentityPrivateKey.generate().public_key() for _ in range(4)]
MESH = IPv4Network("100.64.0.0/24")


def address(node_id: int) -> IPv4Address:
    return MESH[node_id]


@st.composite
def peers(draw: st.DrawFn, node_id: int) -> Peer:
    relayed = draw(st.lists(st.integers(1, 40), max_size=3, unique=True))
    return Peer(
        node_id=node_id,
        name=draw(st.sampled_from(["a", "b", f"n{node_id}"])),
        role=draw(st.sampled_from(["node", "relay"])),
        wg_public_key=draw(st.sampled_from(WG_KEYS)),
        identity_public_key=draw(st.sampled_from(ID_KEYS)),
        tunnel_address=address(node_id),
        endpoints=draw(st.lists(st.sampled_from(["198.18.0.1:51820", "198.18.0.2:51821"]), max_size=2)),
        allowed_ips=[IPv4Network(f"{address(d)}/32") for d in [node_id, *relayed]],
        persistent_keepalive=draw(st.sampled_from([None, 25])),
    )


@st.composite
def routes(draw: st.DrawFn, destination: int) -> Route:
    return Route(
        destination=destination,
        destination_address=address(destination),
        via=draw(st.integers(1, 40)),
        cost=draw(st.sampled_from([None, 1.0, 31.2])),
    )


@st.composite
def netmaps(draw: st.DrawFn) -> NetMap:
    ids = sorted(draw(st.sets(st.integers(2, 40), max_size=12)))
    route_ids = sorted(draw(st.sets(st.sampled_from(ids), max_size=len(ids)))) if ids else []
    return NetMap(
        serial=draw(st.integers(1, 50)),
        node=SelfNode(
            node_id=1,
            name=draw(st.sampled_from(["me", "me-2"])),
            role="node",
            tunnel_address=address(1),
            mesh_cidr=MESH,
            listen_port=draw(st.sampled_from([51820, 51821])),
        ),
        peers=[draw(peers(i)) for i in ids],
        routes=[draw(routes(i)) for i in route_ids],
        forward=draw(st.booleans()),
    )


@settings(max_examples=300, deadline=None)
@given(netmaps(), netmaps())
def test_applying_the_delta_of_two_maps_to_the_first_gives_the_second(old: NetMap, new: NetMap):
    assert apply_delta(old, netmap_delta(old, new)) == new


@settings(max_examples=200, deadline=None)
@given(netmaps(), netmaps())
def test_the_delta_survives_the_json_an_agent_reads(old: NetMap, new: NetMap):
    sent = netmap_delta(old, new).model_dump_json()
    received = TypeAdapter(NetMapUpdate).validate_json(sent)
    assert isinstance(received, NetMapDelta)
    assert apply_delta(old, received) == new


@settings(max_examples=200, deadline=None)
@given(netmaps(), netmaps())
def test_a_delta_names_only_what_changed(old: NetMap, new: NetMap):
    delta = netmap_delta(old, new)
    old_peers = {p.node_id: p for p in old.peers}
    assert all(old_peers.get(p.node_id) != p for p in delta.peers_upserted)
    assert set(delta.peers_removed) == {p.node_id for p in old.peers} - {p.node_id for p in new.peers}
    old_routes = {r.destination: r for r in old.routes}
    assert all(old_routes.get(r.destination) != r for r in delta.routes_upserted)
    assert (delta.base_serial, delta.serial) == (old.serial, new.serial)


@given(netmaps())
def test_the_delta_of_a_map_to_itself_is_empty(netmap: NetMap):
    delta = netmap_delta(netmap, netmap)
    assert not (delta.peers_upserted or delta.peers_removed or delta.routes_upserted or delta.routes_removed)


@given(netmaps(), netmaps())
def test_a_delta_for_another_serial_is_refused(old: NetMap, new: NetMap):
    held = old.model_copy(update={"serial": old.serial + 1})
    with pytest.raises(DeltaMismatch, match=f"applies to serial {old.serial}"):
        apply_delta(held, netmap_delta(old, new))


@given(netmaps(), netmaps())
def test_apply_puts_records_in_canonical_order_whatever_order_the_delta_lists_them(old: NetMap, new: NetMap):
    delta = netmap_delta(old, new)
    shuffled = delta.model_copy(
        update={
            "peers_upserted": delta.peers_upserted[::-1],
            "routes_upserted": delta.routes_upserted[::-1],
            "peers_removed": delta.peers_removed[::-1],
        }
    )
    assert apply_delta(old, shuffled) == new


def test_a_poll_answer_without_kind_is_a_full_map():
    netmap = NetMap(
        serial=3,
        node=SelfNode(
            node_id=1, name="me", role="node", tunnel_address=address(1), mesh_cidr=MESH, listen_port=51820
        ),
        peers=[],
        routes=[],
        forward=False,
    )
    body = netmap.model_dump_json(exclude={"kind"})
    assert '"kind"' not in body
    assert TypeAdapter(NetMapUpdate).validate_json(body) == netmap
