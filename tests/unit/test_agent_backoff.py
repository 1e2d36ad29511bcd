"""The agent's reconnect backoff: doubles up to a ceiling, jitter only ever shortens, success starts over."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.backoff import RetryBackoff


def test_schedule_without_jitter_doubles_to_the_ceiling():
    b = RetryBackoff(initial_s=0.5, factor=2, max_s=30, jitter=0.5, rand=lambda: 0.0)
    assert [b.next_delay() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_full_jitter_halves_each_delay_at_most():
    b = RetryBackoff(initial_s=1, factor=2, max_s=8, jitter=0.5, rand=lambda: 0.999999)
    assert [round(b.next_delay(), 3) for _ in range(5)] == [0.5, 1, 2, 4, 4]


def test_success_starts_the_schedule_over():
    b = RetryBackoff(initial_s=1, max_s=60, rand=lambda: 0.0)
    for _ in range(5):
        b.next_delay()
    b.reset()
    assert b.next_delay() == 1


def test_agents_with_different_randomness_spread_out():
    delays = set()
    for seed in range(20):
        b = RetryBackoff(rand=random.Random(seed).random)
        for _ in range(4):
            last = b.next_delay()
        delays.add(round(last, 6))
    assert len(delays) == 20


@given(st.integers(min_value=0, max_value=10_000), st.floats(min_value=0, max_value=0.999))
def test_delays_stay_within_bounds(attempt, r):
    b = RetryBackoff(initial_s=0.5, max_s=30, jitter=0.5, rand=lambda: r, attempt=attempt)
    d = b.next_delay()
    assert 0.25 <= d <= 30


@pytest.mark.parametrize("kwargs", [{"initial_s": 0}, {"max_s": 0.1}, {"factor": 0.5}, {"jitter": 1.0}])
def test_nonsense_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match="backoff needs"):
        RetryBackoff(**kwargs)
