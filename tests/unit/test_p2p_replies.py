"""The reply cache: a repeated request is answered with the kept answer or left to the running one, and
memory stays bounded by entries, bytes and age."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.core.replies import Begun, ReplyCache


def cache(**kw: float) -> ReplyCache:
    return ReplyCache(**{"max_entries": 8, "max_bytes": 1000, "max_age": 10.0, **kw})  # type: ignore[arg-type]


def test_a_request_runs_once_then_its_answer_is_given_again():
    c = cache()
    assert c.begin(1, b"r", 0.0) is Begun.NEW
    assert c.begin(1, b"r", 0.1) is Begun.RUNNING
    c.finish(1, b"r", ["answer"], 10, 0.2)
    assert c.begin(1, b"r", 0.3) == (["answer"], 10)
    assert c.begin(2, b"r", 0.3) is Begun.NEW  # another sender: another request


def test_answers_are_forgotten_after_max_age_and_the_request_then_counts_as_new():
    c = cache(max_age=1.0)
    c.begin(1, b"r", 0.0)
    c.finish(1, b"r", ["a"], 10, 0.5)
    assert c.begin(1, b"r", 1.5) is Begun.NEW


def test_the_oldest_entries_go_first_when_full():
    c = cache(max_entries=2, max_bytes=25)
    for n in range(3):
        c.begin(1, bytes([n]), float(n))
    assert (1, b"\x00") not in c and len(c) == 2
    c.finish(1, b"\x01", ["a"], 20, 3.0)
    c.finish(1, b"\x02", ["b"], 20, 3.0)  # 40 bytes > 25: the older answer goes
    assert (1, b"\x01") not in c and c.begin(1, b"\x02", 3.0) == (["b"], 20)


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError):
        ReplyCache(max_entries=0, max_bytes=1, max_age=1.0)


@given(st.lists(st.tuples(st.integers(0, 30), st.booleans(), st.integers(1, 400)), max_size=300))
def test_memory_is_bounded_whatever_arrives(events):
    c = cache()
    now = 0.0
    for request, finish, size in events:
        now += 0.05
        key = request.to_bytes(2, "big")
        c.begin(1, key, now)
        if finish:
            c.finish(1, key, ["x"], size, now)
        assert len(c) <= 8 and c._bytes <= 1000
