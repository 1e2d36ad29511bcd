"""The audit trail's writer: who asked (`RequestOrigin`, set per request by the `AuditOrigin` ASGI
middleware), one `AuditEntry` per event into the store, a log line per event, and a throttle that keeps
unauthenticated callers from filling the trail.

Rules:
- An event is written after the action it records, in its own transaction, by a worker thread
  (`StoreCalls.ordered`: events are written in the order they happened, and a read of the trail waits
  for the events recorded before it); a lost database costs the event (logged as a warning), never
  the action, which has happened already. At most `MAX_UNWRITTEN` events wait to be written.
- Nothing secret goes in: callers pass ids and names, never keys or credentials (wire.audit).
- Events an unauthenticated caller can cause (`throttled=True`: refused enrollments, admin
  authentication failures) are kept at most `per_source` per window per source address and
  `overall` per window in all; what a window drops is counted into the next event kept.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from controller.clock import Clock
from controller.store import AuditEntry, AuditQuery, Store, StoreCalls, StoreUnavailable
from wire.audit import ACTOR_HEADER, AuditEvent, clean_actor

log = logging.getLogger("wgmesh.audit")
MAX_UNWRITTEN = 10_000

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


@dataclass(frozen=True)
class RequestOrigin:
    """Where a request came from: its source address and the user name the admin's client claims."""

    source: str | None
    claimed: str | None = None


_origin: contextvars.ContextVar[RequestOrigin | None] = contextvars.ContextVar("audit_origin", default=None)


def current_origin() -> RequestOrigin | None:
    """The origin of the request being served (None outside a request)."""
    return _origin.get()


class AuditOrigin:
    """ASGI middleware: makes the request's origin known to `AuditTrail` for as long as it is served."""

    _header = ACTOR_HEADER.lower().encode()

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        claimed = None
        for name, value in scope.get("headers", []):
            if name == self._header:
                claimed = clean_actor(value.decode("latin-1"))
        token = _origin.set(RequestOrigin(str(client[0])[:64] if client else None, claimed))
        try:
            await self.app(scope, receive, send)
        finally:
            _origin.reset(token)


class Throttle:
    """At most `per_source` events per source and `overall` in all per `window`; counts the rest."""

    def __init__(self, per_source: int = 10, overall: int = 60, window: timedelta = timedelta(minutes=1)):
        self.per_source = per_source
        self.overall = overall
        self.window = window
        self._start: datetime | None = None
        self._counts: dict[str | None, int] = {}
        self._total = 0
        self.dropped = 0

    def admit(self, source: str | None, now: datetime) -> bool:
        if self._start is None or now - self._start >= self.window or now < self._start:
            self._start, self._counts, self._total = now, {}, 0
        count = self._counts.get(source, 0)
        if count >= self.per_source or self._total >= self.overall:
            self.dropped += 1
            return False
        self._counts[source] = count + 1
        self._total += 1
        return True


ADMIN = "admin"
"""`actor` for a call with the admin credential; the trail adds the name the client claims."""


class AuditTrail:
    def __init__(
        self, store: Store, clock: Clock, calls: StoreCalls, throttle: Throttle | None = None
    ) -> None:
        self.store = store
        self.clock = clock
        self.calls = calls
        self.throttle = throttle or Throttle()

    async def events(self, query: AuditQuery) -> list[AuditEvent]:
        """The events `query` selects, including every one recorded before this call."""
        return await self.calls.ordered(self.store.audit_events, query)

    def record(
        self,
        action: str,
        result: str,
        actor: str,
        *,
        node_id: int | None = None,
        node_name: str | None = None,
        policy_version: int | None = None,
        detail: str = "",
        throttled: bool = False,
    ) -> None:
        origin = current_origin()
        source = origin.source if origin else None
        now = self.clock.now()
        if throttled and not self.throttle.admit(source, now):
            return
        if actor == ADMIN and origin is not None and origin.claimed:
            actor = f"{ADMIN} ({origin.claimed})"
        if self.throttle.dropped and throttled:
            detail += f" ({self.throttle.dropped} more such events before this one were not recorded)"
            self.throttle.dropped = 0
        entry = AuditEntry(
            at=now,
            actor=actor,
            action=action,
            result=result,
            source=source,
            node_id=node_id,
            node_name=node_name,
            policy_version=policy_version,
            detail=" ".join(detail.split()),
        )
        log.info(
            "audit: %s %s %s%s from %s: %s",
            actor,
            action,
            result,
            f" node {node_id} ({node_name})" if node_id is not None else "",
            source or "-",
            entry.detail,
        )
        if self.calls.pending() >= MAX_UNWRITTEN:
            log.warning(
                "audit event %s by %s not stored: %d events wait already", action, actor, MAX_UNWRITTEN
            )
            return
        if not self.calls.ordered_background(self._write, entry):
            log.warning("audit event %s by %s not stored: the database is away", action, actor)

    def _write(self, entry: AuditEntry) -> None:
        try:
            self.store.add_audit(entry)
        except StoreUnavailable as e:
            log.warning("audit event %s by %s not stored: %s", entry.action, entry.actor, e)
