"""The handshake gate (p2p/core/gate.py): per-source limit, and a source with nothing unfinished always
gets through however the others hold the slots."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from p2p.core.gate import GateVerdict, admit_handshake

SOURCES = st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"])


def test_one_source_gets_its_share_and_no_more():
    assert admit_handshake(["a"] * 3, "a", per_source=4, total=64).verdict is GateVerdict.ADMIT
    assert admit_handshake(["a"] * 4, "a", per_source=4, total=64).verdict is GateVerdict.REFUSE_SOURCE
    assert admit_handshake(["a"] * 4, "b", per_source=4, total=64).verdict is GateVerdict.ADMIT


def test_when_full_the_busiest_sources_oldest_makes_room_for_a_lighter_one():
    held = ["b", "a", "a", "a", "b"]
    decision = admit_handshake(held, "c", per_source=4, total=5)
    assert decision.verdict is GateVerdict.ADMIT_DISPLACING and decision.displace == 1  # a's oldest
    assert admit_handshake(held, "b", per_source=4, total=5).verdict is GateVerdict.ADMIT_DISPLACING
    assert admit_handshake(held, "a", per_source=4, total=5).verdict is GateVerdict.REFUSE_FULL


@given(st.lists(SOURCES, max_size=40), st.integers(1, 8), st.integers(1, 40))
def test_a_source_with_nothing_unfinished_is_always_admitted(held, per_source, total):
    held = held[:total]
    decision = admit_handshake(held, "192.0.2.9", per_source=per_source, total=total)
    assert decision.admitted
    if decision.displace is not None:
        victim = held[decision.displace]
        assert held.count(victim) == max(held.count(s) for s in held)
