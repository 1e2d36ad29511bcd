"""Backoff with jitter and the token bucket: pure functions of attempt, rand and now."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.core.pacing import Backoff, TokenBucket


def test_backoff_doubles_up_to_the_cap():
    b = Backoff(initial=0.1, maximum=2.0, jitter=0.0)
    assert [b.delay(n, 0.0) for n in range(7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0])


@given(st.integers(0, 10_000), st.floats(0, 1, exclude_max=True))
def test_backoff_with_jitter_stays_within_half_to_full_delay(attempt, rand):
    b = Backoff(initial=0.05, maximum=30.0, jitter=0.5)
    full = min(30.0, 0.05 * 2 ** min(attempt, 64))
    assert full * 0.5 <= b.delay(attempt, rand) <= full


def test_jitter_spreads_peers_that_retry_together():
    b = Backoff(initial=1.0, maximum=10.0)
    assert len({b.delay(3, r / 10) for r in range(10)}) == 10


def test_token_bucket_allows_burst_then_rate():
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert [bucket.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.take(0.1) and not bucket.take(0.1)
    assert sum(bucket.take(10.0) for _ in range(100)) == 5  # refills to the burst, not beyond


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        Backoff(initial=2.0, maximum=1.0)
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1, now=0.0)
