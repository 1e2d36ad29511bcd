"""Pacing rules with time as an input: exponential backoff with jitter for redials, and a token bucket
for rate limits."""

from __future__ import annotations


class Backoff:
    """Delay before redial attempt `attempt` (0-based): initial * multiplier**attempt, capped at
    `maximum`, then spread by jitter: the delay is drawn from [d * (1 - jitter), d] with `rand` in [0, 1),
    so peers that lost the same node do not all redial at the same instant."""

    __slots__ = ("initial", "jitter", "maximum", "multiplier")

    def __init__(self, initial: float, maximum: float, multiplier: float = 2.0, jitter: float = 0.5) -> None:
        if not 0 < initial <= maximum or multiplier < 1 or not 0 <= jitter <= 1:
            raise ValueError("backoff needs 0 < initial <= maximum, multiplier >= 1, 0 <= jitter <= 1")
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self.jitter = jitter

    def delay(self, attempt: int, rand: float) -> float:
        if attempt < 0 or not 0 <= rand < 1:
            raise ValueError("attempt must be >= 0 and rand in [0, 1)")
        # Cap the exponent first so a long outage cannot overflow the float.
        exponent = min(attempt, 64)
        base = min(self.maximum, self.initial * self.multiplier**exponent)
        return base * (1 - self.jitter * rand)


class TokenBucket:
    """Allows `rate` events per second on average and bursts of up to `burst`."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._last = now
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False
