"""The controller's delta renderer (controller.netmap.render_delta) finds on the routing arrays exactly
the delta `wire.delta.netmap_delta` computes from the two rendered maps: for random directories (nodes
added, removed, re-keyed), random next hops (direct, relayed, unreachable) and costs."""

from __future__ import annotations

from ipaddress import IPv4Network

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller import netmap
from controller.netmap import Directory, MapInputs, NodeCard, render_delta, render_map
from keys.types import IdentityPrivateKey, WireGuardPrivateKey
from wire.delta import apply_delta, netmap_delta
from wire.models import NetMap, NetMapDelta

MESH = IPv4Network("100.64.0.0/24")
WG = [WireGuardPrivateKey.generate().public_key().base64() for _ in range(3)]
ID = IdentityPrivateKey.generate().public_key().base64()
ME = 1


def card(node_id: int, key: int = 0, endpoint: int = 1) -> NodeCard:
    return NodeCard(
        node_id=node_id,
        name=f"n{node_id}",
        role="node",
        wg_public_key=WG[key],
        identity_public_key=ID,
        tunnel_address=MESH[node_id],
        endpoints=(f"198.18.0.{endpoint}:51820",),
        listen_port=51820,
    )


@st.composite
def inputs(draw: st.DrawFn, cards: list[NodeCard]) -> MapInputs:
    directory = Directory(cards, MESH, 25)
    n = len(cards)
    index = [c.node_id for c in cards].index(ME)
    others = [p for p in range(n) if p != index]
    row = []
    for d in range(n):
        choice = draw(st.sampled_from(["direct", "relayed", "unreachable"])) if others else "direct"
        if d == index or choice == "direct":
            row.append(d)
        elif choice == "unreachable":
            row.append(-1)
        else:
            row.append(draw(st.sampled_from(others)))
    tenths = [draw(st.sampled_from([-1, 10, 312])) for _ in range(n)]
    return MapInputs(
        directory, index, np.array(row, dtype=np.int32), np.array(tenths, dtype=np.int32), draw(st.booleans())
    )


@st.composite
def pairs(draw: st.DrawFn) -> tuple[MapInputs, MapInputs]:
    old_ids = sorted({ME} | draw(st.sets(st.integers(2, 30), max_size=10)))
    new_ids = sorted({ME} | draw(st.sets(st.sampled_from(old_ids[1:] + list(range(31, 36))), max_size=12)))
    old_cards = {i: card(i) for i in old_ids}
    new_cards = []
    for i in new_ids:
        kind = draw(st.sampled_from(["same object", "equal copy", "new key", "new endpoint"]))
        if i in old_cards and kind == "same object":
            new_cards.append(old_cards[i])
        elif kind == "new key":
            new_cards.append(card(i, key=1))
        elif kind == "new endpoint":
            new_cards.append(card(i, endpoint=2))
        else:
            new_cards.append(card(i))
    old = draw(inputs([old_cards[i] for i in old_ids]))
    same_directory = set(old_ids) == set(new_ids) and draw(st.booleans())
    new = draw(inputs(old.directory.cards if same_directory else new_cards))
    return old, new


@settings(max_examples=400, deadline=None)
@given(pairs())
def test_the_rendered_delta_is_the_delta_of_the_rendered_maps(pair: tuple[MapInputs, MapInputs]):
    old_inputs, new_inputs = pair
    old = NetMap.model_validate_json(render_map(old_inputs, 4))
    new = NetMap.model_validate_json(render_map(new_inputs, 5))
    delta = NetMapDelta.model_validate_json(render_delta(old_inputs, new_inputs, 4, 5))
    assert delta == netmap_delta(old, new)
    assert apply_delta(old, delta) == new


@settings(max_examples=50, deadline=None)
@given(pairs())
def test_a_full_map_with_its_kind_is_the_same_map(pair: tuple[MapInputs, MapInputs]):
    _old, new_inputs = pair
    plain = render_map(new_inputs, 5)
    with_kind = render_map(new_inputs, 5, with_kind=True)
    assert b'"kind"' not in plain and with_kind.startswith(b'{"kind":"full",')
    assert NetMap.model_validate_json(plain) == NetMap.model_validate_json(with_kind)


@settings(max_examples=100, deadline=None)
@given(pairs())
def test_the_many_peers_path_renders_the_same_delta(pair: tuple[MapInputs, MapInputs]):
    old_inputs, new_inputs = pair
    few = render_delta(old_inputs, new_inputs, 4, 5)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(netmap, "_FEW_PEERS", 0)
        many = render_delta(old_inputs, new_inputs, 4, 5)
    assert many == few
