"""Enrollment nonces: the controller's challenge an enrolling host signs, so a recorded enroll request
cannot be sent again. The book is kept in the store, so a nonce one replica issued is taken by
whichever replica the enroll request reaches; time is an argument.

Rules:
- A nonce is 128 random bits, issued by `issue(now)`, valid for `ttl` and accepted once: `take` removes
  it (one conditional delete, so two replicas cannot both take it) whether the enrollment then
  succeeds or not.
- At most about `capacity` nonces are outstanding; issuing one drops the expired ones and those more
  than `capacity` issues old, so a flood of nonce requests costs bounded space and only delays the
  flooder's victims by one retry (the agent asks again when its nonce was dropped).
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Protocol

NONCE_TTL = timedelta(seconds=120)
NONCE_CAPACITY = 4096


class NonceStore(Protocol):
    def add_nonce(self, nonce: str, expires_at: datetime, now: datetime, capacity: int) -> None: ...

    def take_nonce(self, nonce: str, now: datetime) -> bool: ...

    def nonce_count(self) -> int: ...


class EnrollNonces:
    def __init__(self, store: NonceStore, ttl: timedelta = NONCE_TTL, capacity: int = NONCE_CAPACITY) -> None:
        self.ttl = ttl
        self.capacity = capacity
        self._store = store

    def __len__(self) -> int:
        return self._store.nonce_count()

    def issue(self, now: datetime) -> str:
        nonce = secrets.token_urlsafe(16)
        self._store.add_nonce(nonce, now + self.ttl, now, self.capacity)
        return nonce

    def take(self, nonce: str, now: datetime) -> bool:
        """True exactly once for a nonce issued less than `ttl` ago; False for anything else."""
        return self._store.take_nonce(nonce, now)
