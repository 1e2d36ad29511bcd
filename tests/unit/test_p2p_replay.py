"""The replay window for relayed messages: a message is accepted once, fresh, and memory stays bounded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from p2p.core.replay import Freshness, ReplayWindow


def mid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def accept(w: ReplayWindow, origin: int, n: int, ts: float, now: float) -> Freshness:
    verdict = w.check(origin, mid(n), ts, now)
    if verdict is Freshness.FRESH:
        w.record(origin, mid(n), ts, now)
    return verdict


def test_a_message_is_accepted_once():
    w = ReplayWindow(window=60, per_origin=100)
    assert accept(w, 1, 1, 100.0, 100.0) is Freshness.FRESH
    assert accept(w, 1, 1, 100.0, 101.0) is Freshness.REPLAYED
    assert accept(w, 2, 1, 100.0, 101.0) is Freshness.FRESH  # ids are per origin


def test_timestamps_outside_the_window_are_stale_either_side():
    w = ReplayWindow(window=60, per_origin=100)
    assert accept(w, 1, 1, 30.0, 100.0) is Freshness.STALE
    assert accept(w, 1, 2, 170.0, 100.0) is Freshness.STALE
    assert accept(w, 1, 3, 41.0, 100.0) is Freshness.FRESH


def test_forgetting_an_id_under_a_flood_raises_the_floor_instead_of_reopening_replays():
    w = ReplayWindow(window=60, per_origin=3)
    for n in range(1, 6):
        assert accept(w, 1, n, 100.0 + n, 106.0) is Freshness.FRESH
    # ids 1 and 2 were forgotten; replaying them is still refused (at or below the floor)
    assert accept(w, 1, 1, 101.0, 106.0) is Freshness.REPLAYED
    assert accept(w, 1, 2, 102.0, 106.0) is Freshness.REPLAYED
    assert accept(w, 1, 6, 106.0, 106.0) is Freshness.FRESH
    assert w.size() == 3


@given(
    st.lists(st.tuples(st.integers(1, 3), st.integers(0, 40), st.floats(0, 2)), max_size=300),
    st.dictionaries(st.integers(0, 40), st.floats(-8, 8)),
    st.integers(1, 10),
)
def test_no_message_is_ever_accepted_twice_and_memory_is_bounded(arrivals, sent_at, per_origin):
    # A message's timestamp is signed with it, so every copy (a replay included) carries the same one.
    w = ReplayWindow(window=10, per_origin=per_origin)
    accepted: set[tuple[int, int]] = set()
    now = 1000.0
    for origin, n, advance in arrivals:
        now += advance
        timestamp = 1000.0 + n * 0.5 + sent_at.get(n, 0.0)
        if accept(w, origin, n, timestamp, now) is Freshness.FRESH:
            assert (origin, n) not in accepted
            accepted.add((origin, n))
        assert w.size() <= 3 * per_origin
