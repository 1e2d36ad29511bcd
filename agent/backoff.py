"""The agent's reconnect delays: failed controller calls in a row (`attempt`) and the delay before the
next retry, by the project's one backoff rule (`p2p.core.pacing.Backoff`: exponential with jitter,
pure); the random source is injected.

Delay n (0-based) is `min(max_s, initial_s * factor**n)` shrunk by a random fraction of at most
`jitter`, so agents that lost the same controller at the same moment do not all come back in step.
A delay never exceeds `max_s` and never drops below `(1 - jitter)` of its base (jitter < 1 here: an
agent never retries at once).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from p2p.core.pacing import Backoff


@dataclass
class RetryBackoff:
    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0
    jitter: float = 0.5  # fraction of the base delay that may be taken off at random
    rand: Callable[[], float] = field(default=random.random, repr=False)  # uniform in [0, 1)
    attempt: int = 0

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s < self.initial_s or self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError("backoff needs 0 < initial_s <= max_s, factor >= 1 and 0 <= jitter < 1")
        self._rule = Backoff(self.initial_s, self.max_s, self.factor, self.jitter)

    def next_delay(self) -> float:
        """The delay before the next retry; each call counts one more failed attempt."""
        delay = self._rule.delay(self.attempt, self.rand())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """A call succeeded: the next failure starts from `initial_s` again."""
        self.attempt = 0
