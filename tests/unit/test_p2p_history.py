"""History retention strategies: bounded whatever arrives, O(1) lookups, and who outlives whom."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.core.history import ENTRY_OVERHEAD, ByPriority, History, HistoryEntry, LeastRecentlyUsed, MaxAge
from p2p.core.message import Message


def msg(n: int, priority: int = 5) -> Message:
    return Message("t", n, float(n), 1, n.to_bytes(16, "big"), priority)


def ids(history: History, ns) -> list[int]:
    return [n for n in ns if msg(n).id in history]


def test_lru_evicts_the_message_looked_up_longest_ago():
    h = History(LeastRecentlyUsed(), max_entries=3)
    for n in (1, 2, 3):
        h.add(msg(n), 10, 0.0)
    assert h.get(msg(1).id) == msg(1)  # 1 is now the most recent
    h.add(msg(4), 10, 0.0)
    assert ids(h, range(1, 5)) == [1, 3, 4]


def test_max_age_expires_by_time_and_evicts_oldest_when_full():
    h = History(MaxAge(10.0), max_entries=3)
    for n in (1, 2, 3):
        h.add(msg(n), 10, float(n))
    h.add(msg(4), 10, 4.0)  # full: the oldest goes
    assert ids(h, range(1, 5)) == [2, 3, 4]
    assert h.get(msg(2).id, now=12.5) is None  # 2 was recorded at 2.0: older than 10 s at 12.5
    assert ids(h, range(1, 5)) == [3, 4]
    assert h.prune(100.0) == 2 and len(h) == 0


def test_by_priority_high_priority_messages_outlive_low_ones():
    h = History(ByPriority(), max_entries=4)
    h.add(msg(1, priority=9), 10, 0.0)
    h.add(msg(2, priority=1), 10, 0.0)
    h.add(msg(3, priority=5), 10, 0.0)
    h.add(msg(4, priority=1), 10, 0.0)
    for n in range(5, 9):  # a burst of low-priority traffic
        h.add(msg(n, priority=2), 10, 0.0)
    assert msg(1).id in h and msg(3).id in h  # high and middle priority survive
    assert msg(2).id not in h and msg(4).id not in h  # lowest went first, oldest first


def test_by_priority_with_ages_keeps_a_priority_p_message_base_age_times_p():
    h = History(ByPriority(base_age=1.0), max_entries=100)
    h.add(msg(1, priority=1), 10, 0.0)
    h.add(msg(2, priority=10), 10, 0.0)
    h.prune(5.0)
    assert ids(h, [1, 2]) == [2]
    h.prune(10.5)
    assert len(h) == 0


def test_byte_bound_holds_and_oversized_message_is_not_kept():
    h = History(max_entries=1000, max_bytes=10 * (100 + ENTRY_OVERHEAD))
    for n in range(50):
        h.add(msg(n), 100, 0.0)
    assert h.total_bytes <= h.max_bytes and len(h) == 10
    assert h.add(msg(99), 10**9, 0.0) is False and msg(99).id not in h


def test_adding_a_known_id_changes_nothing():
    h = History()
    assert h.add(msg(1), 10, 0.0) is True
    assert h.add(msg(1), 10, 0.0) is False and len(h) == 1


strategies = st.sampled_from(["lru", "age", "prio", "prio_age"])
ops = st.lists(
    st.tuples(st.integers(0, 60), st.integers(1, 10), st.integers(0, 5000), st.booleans()), max_size=300
)


@given(strategies, ops, st.integers(1, 20))
def test_history_stays_bounded_and_consistent_whatever_arrives(kind, operations, max_entries):
    retention = {
        "lru": LeastRecentlyUsed,
        "age": lambda: MaxAge(5.0),
        "prio": ByPriority,
        "prio_age": lambda: ByPriority(base_age=0.5),
    }[kind]()
    lifetime = {
        "lru": lambda p: float("inf"),
        "age": lambda p: 5.0,
        "prio": lambda p: float("inf"),
        "prio_age": lambda p: 0.5 * p,
    }[kind]
    max_bytes = 8 * (1000 + ENTRY_OVERHEAD)
    h = History(retention, max_entries=max_entries, max_bytes=max_bytes)
    now = 0.0
    for n, priority, size, lookup in operations:
        now += 0.1
        message = Message("t", None, now, 1, n.to_bytes(16, "big"), priority)
        if lookup:
            got = h.get(message.id, now)
            assert got is None or got.id == message.id
            # nothing past its lifetime is ever returned
            for entry in h._entries.values():
                kept, _, recorded_at = entry_parts(entry)
                assert recorded_at + lifetime(kept.priority) > now
        else:
            h.add(message, size, now)
        assert len(h) <= max_entries
        assert h.total_bytes <= max_bytes
        assert h.total_bytes == sum(entry_parts(e)[1] for e in h._entries.values())


@pytest.mark.parametrize("retention", [LeastRecentlyUsed, lambda: MaxAge(10.0)])
@given(st.lists(st.integers(0, 30), max_size=40), st.integers(1, 12), st.integers(1, 900))
def test_adding_many_keeps_what_adding_one_by_one_keeps(retention, ns, max_entries, size):
    one, many = (History(retention(), max_entries=max_entries, max_bytes=4000) for _ in range(2))
    added_one = [msg(n) for n in ns if one.add(msg(n), size, 1.0)]
    assert many.add_many([msg(n) for n in ns], size, 1.0) == added_one  # repeats in the list too
    assert list(many._entries) == list(one._entries) and many.total_bytes == one.total_bytes


@pytest.mark.parametrize("retention", [LeastRecentlyUsed, lambda: MaxAge(10.0)])
def test_deferred_entries_count_as_added_in_order_before_anything_is_read(retention):
    one, deferred = (History(retention(), max_entries=3) for _ in range(2))
    for n in (1, 2, 3, 4):
        one.add(msg(n), 10, 1.0)
        deferred.deferred.append((*msg(n), 10 + ENTRY_OVERHEAD, 1.0))
    assert msg(4).id in deferred and msg(1).id not in deferred
    assert deferred.get(msg(2).id) == one.get(msg(2).id) == msg(2) and len(deferred) == 3
    assert list(deferred._entries) == list(one._entries) and deferred.total_bytes == one.total_bytes


def test_bounds_must_be_positive():
    with pytest.raises(ValueError):
        History(max_entries=0)
    with pytest.raises(ValueError):
        MaxAge(0)


def entry_parts(entry: tuple) -> tuple[Message, int, float]:
    """(message, size, recorded_at) of a kept entry: a HistoryEntry, or the default strategy's plain
    tuple (*message, size, recorded_at)."""
    if isinstance(entry, HistoryEntry):
        return entry.message, entry.size, entry.recorded_at
    return Message(*entry[:6]), entry[6], entry[7]
