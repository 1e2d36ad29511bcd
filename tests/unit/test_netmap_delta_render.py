"""The controller's map encoder (controller.netmap) on random directories (nodes added, removed,
re-keyed, tagged, asked to rotate), random next hops (direct, relayed, unreachable) and costs: what it
writes is byte for byte the wire models' own serialization, and its delta (found on the routing arrays)
is exactly the delta `wire.delta.netmap_delta` computes from the two rendered maps."""

from __future__ import annotations

from ipaddress import IPv4Network

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.netmap import MapInputs, NodeCard, NodeCards, render_delta, render_map
from keys.types import IdentityPrivateKey, WireGuardPrivateKey
from wire.delta import apply_delta, netmap_delta
from wire.models import NetMap, NetMapDelta

MESH = IPv4Network("100.64.0.0/24")
WG = [WireGuardPrivateKey.generate().public_key().base64() for _ in range(3)]
ID = IdentityPrivateKey.generate().public_key().base64()
ME = 1


def card(
    node_id: int, key: int = 0, endpoint: int = 1, tags: tuple[str, ...] = (), rotation: int | None = None
) -> NodeCard:
    return NodeCard(
        node_id=node_id,
        name=f"n{node_id}",
        role="node",
        wg_public_key=WG[key],
        identity_public_key=ID,
        tunnel_address=MESH[node_id],
        endpoints=(f"198.18.0.{endpoint}:51820",) if endpoint else (),
        listen_port=51820,
        tags=tags,
        key_rotation=rotation,
    )


@st.composite
def inputs(
    draw: st.DrawFn, cards: list[NodeCard], keepalive: int | None = 25, mostly_direct: bool = False
) -> MapInputs:
    """Random rows; `mostly_direct`: most destinations direct at one cost, as in a full mesh (the
    controller then keeps the row compact and diffs only where the rows differ)."""
    directory = NodeCards(cards, MESH, keepalive)
    n = len(cards)
    index = [c.node_id for c in cards].index(ME)
    others = [p for p in range(n) if p != index]
    kinds = (
        ["direct"] * 6 + ["relayed", "unreachable"] if mostly_direct else ["direct", "relayed", "unreachable"]
    )
    costs = [312] * 8 + [-1, 10, 100_007] if mostly_direct else [-1, 0, 3, 10, 312, 100_007, 123_456_789]
    row = []
    for d in range(n):
        choice = draw(st.sampled_from(kinds)) if others else "direct"
        if d == index or choice == "direct":
            row.append(d)
        elif choice == "unreachable":
            row.append(-1)
        else:
            row.append(draw(st.sampled_from(others)))
    tenths = [draw(st.sampled_from(costs)) for _ in range(n)]
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
        kind = draw(
            st.sampled_from(
                ["same object", "equal copy", "new key", "new endpoint", "no endpoint", "tagged", "rotating"]
            )
        )
        if i in old_cards and kind == "same object":
            new_cards.append(old_cards[i])
        elif kind == "new key":
            new_cards.append(card(i, key=1))
        elif kind == "new endpoint":
            new_cards.append(card(i, endpoint=2))
        elif kind == "no endpoint":
            new_cards.append(card(i, endpoint=0))
        elif kind == "tagged":
            new_cards.append(card(i, tags=("db", "web")))
        elif kind == "rotating":
            new_cards.append(card(i, rotation=7))
        else:
            new_cards.append(card(i))
    mostly_direct = draw(st.booleans())
    old = draw(inputs([old_cards[i] for i in old_ids], mostly_direct=mostly_direct))
    same_directory = set(old_ids) == set(new_ids) and draw(st.booleans())
    keepalive = draw(st.sampled_from([25, None])) if not same_directory else 25
    new = draw(inputs(old.directory.cards if same_directory else new_cards, keepalive, mostly_direct))
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


@settings(max_examples=200, deadline=None)
@given(pairs())
def test_the_fast_encoder_writes_the_models_own_serialization(pair: tuple[MapInputs, MapInputs]):
    old_inputs, new_inputs = pair
    for m in pair:
        with_kind = render_map(m, 5, with_kind=True)
        assert NetMap.model_validate_json(with_kind).model_dump_json().encode() == with_kind
        plain = render_map(m, 5)
        assert NetMap.model_validate_json(plain).model_dump_json(exclude={"kind"}).encode() == plain
    delta = render_delta(old_inputs, new_inputs, 4, 5)
    assert NetMapDelta.model_validate_json(delta).model_dump_json().encode() == delta
