"""Enrollment nonces: the controller's challenge an enrolling host signs, so a recorded enroll request
cannot be sent again. Pure: time is an argument.

Rules:
- A nonce is 128 random bits, issued by `issue(now)`, valid for `ttl` and accepted once: `take` removes
  it whether the enrollment then succeeds or not.
- At most `capacity` nonces are outstanding; issuing one more first drops the expired ones, then the
  oldest, so a flood of nonce requests costs bounded memory and only delays the flooder's victims by
  one retry (the agent asks again when its nonce was dropped).
- Nonces live in this process's memory: replicas behind one address must route an agent's nonce and
  enroll requests to the same replica (the agent makes both on one connection).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from datetime import datetime, timedelta

NONCE_TTL = timedelta(seconds=120)
NONCE_CAPACITY = 4096


class EnrollNonces:
    def __init__(self, ttl: timedelta = NONCE_TTL, capacity: int = NONCE_CAPACITY) -> None:
        self.ttl = ttl
        self.capacity = capacity
        self._expiry: OrderedDict[str, datetime] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self._expiry)

    def issue(self, now: datetime) -> str:
        if len(self._expiry) >= self.capacity:
            self._drop_expired(now)
        while len(self._expiry) >= self.capacity:
            self._expiry.popitem(last=False)
        nonce = secrets.token_urlsafe(16)
        self._expiry[nonce] = now + self.ttl
        return nonce

    def take(self, nonce: str, now: datetime) -> bool:
        """True exactly once for a nonce issued less than `ttl` ago; False for anything else."""
        expiry = self._expiry.pop(nonce, None)
        return expiry is not None and now < expiry

    def _drop_expired(self, now: datetime) -> None:
        while self._expiry:
            nonce, expiry = next(iter(self._expiry.items()))
            if expiry > now:
                return
            del self._expiry[nonce]
