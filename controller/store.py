"""The store interface: what the controller keeps across restarts, as typed records.

Routes never see a database: they call a `Store`. `controller.sqlstore.SqlStore` implements it with
SQLAlchemy Core for SQLite (the default) and PostgreSQL URLs.

Rules every implementation keeps:
- Each method is one transaction: it happens completely or not at all.
- Several controllers (replicas) may share one database. Every change the mesh model must see bumps
  the mesh version by one in the same transaction and logs what it touched (`Change`); a replica
  catches up with `changes_since`. Writes that decide from the caller's view of the mesh (`enroll`,
  `remove_node`) name the version that view is at and fail with `StaleVersion` when another replica
  wrote first: the writers serialize on the version row, so keys, addresses and removals are
  exactly-once across replicas. Key rotation decisions (`save_rotations`, `record_key`) do the same.
- `enroll` checks and consumes the pre-auth key in the same transaction that writes the node, with a
  conditional update, so a single-use key lets exactly one enrollment through even across processes.
- Node ids are never reused; no two nodes share an address, name, WireGuard key or identity key.
- Only hashes of credentials and pre-auth keys are stored.

Store methods block (a query waits on the database): the controller never calls them on its event
loop but through `StoreCalls`, a bounded pool of worker threads with a deadline per call, so a hung
or unreachable database costs a request a 503, never the loop (health, held long-polls) its answers.
Those threads are daemon threads (controller.workers): a call stuck on the database never keeps the
controller from exiting; `close` waits for calls under way up to a deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import ParamSpec, Protocol, TypeVar

from controller.ipam import AddressHold
from controller.mesh import MapState
from controller.rotation import NodeRotation
from controller.topology import LinkRecord, SampleRecord
from controller.workers import DaemonPool
from wire.audit import AuditEvent
from wire.models import IPAddress

log = logging.getLogger("wgmesh.controller")
P = ParamSpec("P")
T = TypeVar("T")


class KeyRefused(Exception):
    """The pre-auth key cannot enroll this host; the message says why."""


class NodeRemoved(KeyRefused):
    """The host's keys belong to a node an admin removed: refused until the admin allows them again."""


class StaleVersion(Exception):
    """Another replica changed the mesh since the version the caller's view is at: catch up, retry."""


class StoreUnavailable(Exception):
    """The database cannot be reached or refused the transaction; nothing was changed."""


class StoreConflict(Exception):
    """A uniqueness rule would break (an address, name or key already in use); the message says which."""


@dataclass(frozen=True)
class PreAuthKeyRecord:
    id: int
    role: str
    reusable: bool
    created_at: datetime
    expires_at: datetime | None
    revoked: bool
    used_count: int
    tags: tuple[str, ...] | None = None  # what its nodes are tagged with; None: none given


def key_refusal(key: PreAuthKeyRecord | None, now: datetime) -> str | None:
    """Why this pre-auth key enrolls nobody now (None: it may, if a single use is still left)."""
    if key is None:
        return "unknown pre-auth key"
    if key.revoked:
        return f"pre-auth key {key.id} was revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return f"pre-auth key {key.id} expired at {key.expires_at.isoformat(timespec='seconds')}"
    return None


@dataclass(frozen=True)
class RemovedNodeRecord:
    """What stays of a removed node: what refuses its keys and answers its credential 410."""

    node_id: int
    name: str
    wg_public_key: str
    identity_public_key: str
    credential_hash: str
    removed_at: datetime


@dataclass(frozen=True)
class NodeRecord:
    node_id: int
    name: str
    hostname: str
    role: str
    wg_public_key: str
    identity_public_key: str
    tunnel_address: IPAddress
    endpoints: tuple[str, ...]
    listen_port: int
    enrolled_at: datetime
    last_seen: datetime | None
    preauth_key_id: int | None
    credential_hash: str
    tags: tuple[str, ...] | None = None  # from its pre-auth key or an admin; None: its role is its tag

    @property
    def own_tags(self) -> tuple[str, ...]:
        """Its tags before the policy document's `tags` entry for its name (which wins): its role when
        neither its pre-auth key nor an admin gave it any."""
        return (self.role,) if self.tags is None else self.tags


@dataclass(frozen=True)
class NodeWrite:
    """A node as enrollment writes it. `node_id=None`: a new node."""

    node_id: int | None
    name: str
    hostname: str
    wg_public_key: str
    identity_public_key: str
    tunnel_address: IPAddress
    endpoints: tuple[str, ...]
    listen_port: int
    credential_hash: str


@dataclass(frozen=True)
class PolicyRecord:
    """One version of the access policy, and the audit entry of the change that made it."""

    version: int
    created_at: datetime
    author: str  # who made the change, as the admin's client said (one admin credential: "admin")
    action: str  # "set" or "rollback"
    restored: int | None  # the version a rollback brought back; None for a set
    text: str  # the document as it was given


@dataclass(frozen=True)
class AuditEntry:
    """One event of the audit trail as it is written (wire.audit.AuditEvent without its id); never a
    secret in any field."""

    at: datetime
    actor: str
    action: str
    result: str
    source: str | None = None
    node_id: int | None = None
    node_name: str | None = None
    policy_version: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class AuditQuery:
    """Which events to read: at or after `since`, about `node` (an id in digits, or a name), with
    `action` or an action under it ("policy": policy.*); the newest `limit` of them."""

    since: datetime | None = None
    node: str | None = None
    action: str | None = None
    limit: int = 1000


@dataclass(frozen=True)
class Snapshot:
    """Everything the controller loads at start-up, as of mesh version `version`."""

    nodes: list[NodeRecord]
    links: list[LinkRecord]
    maps: dict[int, MapState]
    holds: list[AddressHold]
    policy: PolicyRecord | None = None  # the policy in force; None: none was ever set (full mesh)
    version: int = 0
    rotations: list[NodeRotation] = field(default_factory=list)
    samples: list[SampleRecord] = field(default_factory=list)  # link samples replicas shared


@dataclass(frozen=True)
class ChangeBatch:
    """What changed after version `since` up to `version`, read in one transaction.

    `nodes`: the current rows of nodes enrolled or changed; `removed`: ids of nodes gone; `links`: the
    current records of links written; `holds`: every address hold now (the table is small);
    `samples`: the shared link samples of the links written.
    """

    since: int
    version: int
    nodes: list[NodeRecord]
    removed: list[int]
    links: list[LinkRecord]
    holds: list[AddressHold]
    policy: PolicyRecord | None = None  # the policy now, when a change set it; None: unchanged
    rotations: list[NodeRotation] = field(default_factory=list)  # the current records of those written
    samples: list[SampleRecord] = field(default_factory=list)


class Store(Protocol):
    def load(self) -> Snapshot: ...

    def create_preauth_key(
        self,
        key_hash: str,
        role: str,
        reusable: bool,
        created_at: datetime,
        expires_at: datetime | None,
        tags: Sequence[str] | None = None,
    ) -> PreAuthKeyRecord: ...

    def list_preauth_keys(self) -> list[PreAuthKeyRecord]: ...

    def revoke_preauth_key(self, key_id: int) -> PreAuthKeyRecord | None:
        """Revoke (idempotent); None when no such key."""
        ...

    def find_preauth_key(self, key_hash: str) -> PreAuthKeyRecord | None:
        """The key with this hash, None when there is none."""
        ...

    def enroll(
        self,
        key_hash: str,
        node: NodeWrite,
        now: datetime,
        at_version: int | None = None,
        rotations: Callable[[int], Sequence[NodeRotation]] | None = None,
    ) -> NodeRecord:
        """Check and use the pre-auth key, then insert (node_id None: it takes the key's tags) or update
        the node (it keeps its tags), and write the rotation records `rotations(node_id)` gives, in
        the same transaction.

        Raises KeyRefused (unknown, revoked, expired, single-use already used by another host; its
        NodeRemoved when the identity or WireGuard key belongs to a removed node, checked after the key),
        StoreConflict or StaleVersion (the mesh is no longer at `at_version`; None: do not check);
        changes nothing then. A re-enrollment may present the single-use key that enrolled this very
        node before: it is not consumed twice.
        """
        ...

    def remove_node(
        self,
        node_id: int,
        holds: Sequence[AddressHold],
        removed_at: datetime,
        at_version: int | None = None,
        rotations: Sequence[NodeRotation] = (),
    ) -> bool:
        """Delete the node with its link state and map state, add the holds on its address, remember
        it as removed (its keys and credential refused until `allow_removed`) and write `rotations`
        (the next node of a running `rotate --all`), in one transaction."""
        ...

    def removed_nodes(self) -> list[RemovedNodeRecord]:
        """Every removed node not allowed again, by node id."""
        ...

    def removed_by_credential(self, credential_hash: str) -> RemovedNodeRecord | None:
        """The removed node this credential belonged to; None: none."""
        ...

    def allow_removed(self, node_id: int) -> RemovedNodeRecord | None:
        """Forget a removal: its keys may enroll again (as a new node). None: no such removed node."""
        ...

    def version(self) -> int:
        """The mesh version: the number of changes ever committed."""
        ...

    def listen_url(self) -> str | None:
        """The database URL to LISTEN for change notifications on (None: none are sent)."""
        ...

    def changes_since(self, since: int) -> ChangeBatch | None:
        """What changed after `since`; None when the log no longer reaches back that far."""
        ...

    def save_maps(self, maps: Mapping[int, MapState]) -> None:
        """Keep the map serials (a stored serial only grows)."""
        ...

    def save_links(self, links: Sequence[LinkRecord], samples: Sequence[SampleRecord] = ()) -> int:
        """Write link state and shared link samples as one change; the mesh version after it (unchanged
        when both are empty). A link written has exactly the samples given for it kept afterwards; a
        sample of a link not written replaces the one of its end."""
        ...

    def release_holds(self, released: Mapping[int, int]) -> None:
        """Each holder's holds up to that serial go (holder -> the serial it acknowledged), at once."""
        ...

    def save_rotations(self, records: Sequence[NodeRotation], at_version: int | None = None) -> int:
        """Write rotation records (of nodes still there) as one change; the mesh version after it.
        StaleVersion when the mesh is no longer at `at_version` (None: do not check)."""
        ...

    def record_key(
        self,
        node_id: int,
        wg_public_key: str,
        rotations: Sequence[NodeRotation],
        at_version: int | None = None,
    ) -> NodeRecord:
        """A rotation committed: the node's new WireGuard key and the rotation records, in one
        transaction. StoreConflict when another node holds the key; KeyError when the node is gone;
        StaleVersion as for `save_rotations`."""
        ...

    def set_tags(self, node_id: int, tags: Sequence[str] | None) -> NodeRecord:
        """An admin's tags for the node (None: back to its role), bumping the mesh version; KeyError
        when the node is gone."""
        ...

    def touch(self, last_seen: Mapping[int, datetime]) -> None: ...

    def last_seen(self) -> dict[int, datetime]:
        """Each node's last seen time as written (`touch`), by node id (never seen: absent)."""
        ...

    def add_policy(
        self, text: str, author: str, action: str, restored: int | None, now: datetime
    ) -> PolicyRecord:
        """Store a new policy version (the highest so far, plus one) with its audit entry."""
        ...

    def policy_history(self) -> list[PolicyRecord]:
        """Every policy version, oldest first."""
        ...

    def add_audit(self, entry: AuditEntry) -> int:
        """Append one event to the audit trail (its own transaction); its id."""
        ...

    def audit_events(self, query: AuditQuery) -> list[AuditEvent]:
        """The events `query` selects, oldest first."""
        ...

    def add_nonce(self, nonce: str, expires_at: datetime, now: datetime, capacity: int) -> None:
        """Keep an issued enrollment nonce; drop the expired ones and those `capacity` issues old."""
        ...

    def take_nonce(self, nonce: str, now: datetime) -> bool:
        """Remove the nonce; True when it was there and not expired (so exactly one caller gets True)."""
        ...

    def nonce_count(self) -> int: ...

    def share_tls_ca(self, key_pem: str, cert_pem: str) -> tuple[str, str]:
        """Keep this managed CA unless one is kept already; the one kept, which every replica uses."""
        ...

    def close(self) -> None: ...


STORE_WORKERS = 8
"""Threads that run store calls: as many as the PostgreSQL pool has connections, more would only wait."""
STORE_DEADLINE_S = 10.0
"""How long a request waits for one store call before it answers 503 (the call itself runs on, bounded
by the database driver's own timeouts; what it commits is picked up like another replica's change).
A database found away (`outage`) ends every wait at once."""


CLOSE_S = 3.0
"""How long stopping waits for the store calls under way (and then for its last bookkeeping writes)."""


class StoreCalls:
    """Store calls off the event loop: `await calls(store.method, *args)` runs it in a bounded pool of
    worker threads and raises StoreUnavailable when it has not answered within `deadline_s`.
    `background(...)` runs one without waiting (bookkeeping a later call repeats); `ordered(...)`
    runs calls one after the other in the order given (the audit trail's appends, then its reads).
    While `outage(problem)` says the database is away, every call waiting ends with StoreUnavailable
    and new calls fail at once (background ones are dropped), until `outage(None)`."""

    def __init__(self, workers: int = STORE_WORKERS, deadline_s: float = STORE_DEADLINE_S) -> None:
        self.deadline_s = deadline_s
        self._pool = DaemonPool(workers, "wgmesh-store")
        self._serial = DaemonPool(1, "wgmesh-store-ordered")
        self._pending: set[concurrent.futures.Future[object]] = set()
        self._lock = threading.Lock()
        self._outage: str | None = None
        self._gates: set[asyncio.Future[None]] = set()

    def outage(self, problem: str | None) -> None:
        """The database is away (`problem` says why) or back (None). Call on the event loop."""
        self._outage = problem
        if problem is not None:
            for gate in self._gates:
                if not gate.done():
                    gate.set_result(None)

    async def __call__(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        self._check()
        return await self._wait(self._submit(self._pool, functools.partial(fn, *args, **kwargs)))

    async def ordered(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        self._check()
        return await self._wait(self._submit(self._serial, functools.partial(fn, *args, **kwargs)))

    def background(self, fn: Callable[P, object], *args: P.args, **kwargs: P.kwargs) -> bool:
        """Run `fn` without waiting for it; a StoreUnavailable is dropped (the caller tries again later).
        False: not run (the database is away)."""
        if self._outage is not None:
            return False
        self._submit(self._pool, functools.partial(_quiet, fn, *args, **kwargs))
        return True

    def ordered_background(self, fn: Callable[P, object], *args: P.args, **kwargs: P.kwargs) -> bool:
        if self._outage is not None:
            return False
        self._submit(self._serial, functools.partial(_quiet, fn, *args, **kwargs))
        return True

    def _check(self) -> None:
        if self._outage is not None:
            raise StoreUnavailable(self._outage)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def close(self, timeout: float = CLOSE_S) -> bool:
        """Let what was submitted end (up to `timeout`: a hung call is left behind, in a daemon thread
        that does not hold up the exit), then stop. False: some call did not end."""
        with self._lock:
            pending = set(self._pending)
        _done, left = concurrent.futures.wait(pending, timeout=timeout)
        for pool in (self._pool, self._serial):
            pool.shutdown()
        return not left

    def _submit(self, pool: DaemonPool, call: Callable[[], T]) -> concurrent.futures.Future[T]:
        future = pool.submit(call)
        with self._lock:
            self._pending.add(future)  # type: ignore[arg-type]
        future.add_done_callback(self._done)
        return future

    def _done(self, future: concurrent.futures.Future[T]) -> None:
        with self._lock:
            self._pending.discard(future)

    async def _wait(self, future: concurrent.futures.Future[T]) -> T:
        waited = asyncio.wrap_future(future)
        gate = asyncio.get_running_loop().create_future()
        self._gates.add(gate)
        try:
            # A caller that goes away (a client hanging up) does not cancel the call under way.
            await asyncio.wait({waited, gate}, timeout=self.deadline_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._gates.discard(gate)
        if waited.done():
            return waited.result()
        if self._outage is not None:
            raise StoreUnavailable(self._outage)
        raise StoreUnavailable(f"database unavailable: no answer within {self.deadline_s:g} s")


def _quiet(fn: Callable[P, object], *args: P.args, **kwargs: P.kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except StoreUnavailable as e:
        log.debug("background store call %s not done: %s", getattr(fn, "__name__", fn), e)
    except Exception:
        log.exception("background store call %s failed", getattr(fn, "__name__", fn))
