"""The bounded priority queue behind send and inbound queues."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.core.queue import BoundedPriorityQueue


def test_highest_priority_first_fifo_within_a_priority():
    q: BoundedPriorityQueue[str] = BoundedPriorityQueue(10, 1000)
    for item, priority in [("a", 1), ("b", 5), ("c", 10), ("d", 5), ("e", 1)]:
        assert q.push(item, priority, 1)
    assert [q.pop() for _ in range(5)] == ["c", "b", "d", "a", "e"]
    assert q.pop() is None


def test_full_queue_refuses_and_pop_makes_room():
    q: BoundedPriorityQueue[int] = BoundedPriorityQueue(2, 1000)
    assert q.push(1, 5, 1) and q.push(2, 5, 1)
    assert not q.push(3, 10, 1)  # even a high priority item waits: backpressure, not eviction
    q.pop()
    assert q.push(3, 10, 1)


def test_byte_bound_but_an_empty_queue_takes_one_large_item():
    q: BoundedPriorityQueue[int] = BoundedPriorityQueue(100, 100)
    assert q.push(1, 5, 500)
    assert not q.push(2, 5, 1)
    q.pop()
    assert q.push(2, 5, 60) and not q.push(3, 5, 60)


def test_batches_respect_priority_count_and_bytes():
    q: BoundedPriorityQueue[int] = BoundedPriorityQueue(100, 10_000)
    for i in range(10):
        q.push(i, 1 + i % 3, 100)
    batch = q.pop_batch(max_items=4, max_bytes=10_000)
    assert batch == [2, 5, 8, 1]
    batch = q.pop_batch(max_items=100, max_bytes=250)
    assert batch == [4, 7]
    assert len(q) == 4 and q.total_bytes == 400


def test_priority_out_of_range_is_a_programming_error():
    with pytest.raises(ValueError):
        BoundedPriorityQueue(1, 1).push(1, 11, 1)


@given(st.lists(st.one_of(st.tuples(st.integers(1, 10), st.integers(1, 50)), st.none()), max_size=200))
def test_matches_a_sorted_model_and_stays_bounded(ops):
    q: BoundedPriorityQueue[int] = BoundedPriorityQueue(20, 400)
    model: list[tuple[int, int, int, int]] = []  # (-priority, seq, item, size)
    for seq, op in enumerate(ops):
        if op is None:
            expected = min(model) if model else None
            got = q.pop()
            if expected is None:
                assert got is None
            else:
                model.remove(expected)
                assert got == expected[2]
        else:
            priority, size = op
            if q.push(seq, priority, size):
                model.append((-priority, seq, seq, size))
        assert len(q) == len(model) <= 20
        assert q.total_bytes == sum(m[3] for m in model)
        assert len(model) <= 1 or q.total_bytes <= 400
