"""The store interface: what the controller keeps across restarts, as typed records.

Routes never see a database: they call a `Store`. `controller.sqlstore.SqlStore` implements it with
SQLAlchemy Core for SQLite (the default) and PostgreSQL URLs.

Rules every implementation keeps:
- Each method is one transaction: it happens completely or not at all.
- `enroll` checks and consumes the pre-auth key in the same transaction that writes the node, with a
  conditional update, so a single-use key lets exactly one enrollment through even across processes.
- Node ids are never reused; no two nodes share an address, name, WireGuard key or identity key.
- Only hashes of credentials and pre-auth keys are stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from controller.ipam import AddressHold
from controller.mesh import MapState
from controller.rotation import NodeRotation
from controller.topology import LinkRecord
from wire.models import IPAddress


class KeyRefused(Exception):
    """The pre-auth key cannot enroll this host; the message says why."""


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
class Snapshot:
    """Everything the controller loads at start-up."""

    nodes: list[NodeRecord]
    links: list[LinkRecord]
    maps: dict[int, MapState]
    holds: list[AddressHold]
    policy: PolicyRecord | None = None  # the policy in force; None: none was ever set (full mesh)
    rotations: list[NodeRotation] = field(default_factory=list)


class Store(Protocol):
    def load(self) -> Snapshot: ...

    def create_preauth_key(
        self, key_hash: str, role: str, reusable: bool, created_at: datetime, expires_at: datetime | None
    ) -> PreAuthKeyRecord: ...

    def list_preauth_keys(self) -> list[PreAuthKeyRecord]: ...

    def revoke_preauth_key(self, key_id: int) -> PreAuthKeyRecord | None:
        """Revoke (idempotent); None when no such key."""
        ...

    def enroll(self, key_hash: str, node: NodeWrite, now: datetime) -> NodeRecord:
        """Check and use the pre-auth key, then insert (node_id None) or update the node.

        Raises KeyRefused (unknown, revoked, expired, single-use already used by another host) or
        StoreConflict; changes nothing then. A re-enrollment may present the single-use key that
        enrolled this very node before: it is not consumed twice.
        """
        ...

    def remove_node(self, node_id: int, holds: Sequence[AddressHold]) -> bool:
        """Delete the node with its link state and map state, and add the holds on its address."""
        ...

    def save_maps(self, maps: Mapping[int, MapState]) -> None: ...

    def save_links(self, links: Sequence[LinkRecord]) -> None: ...

    def release_holds(self, holder: int, up_to_serial: int) -> None: ...

    def save_rotations(self, records: Sequence[NodeRotation]) -> None: ...

    def record_key(self, node_id: int, wg_public_key: str, rotations: Sequence[NodeRotation]) -> NodeRecord:
        """A rotation committed: the node's new WireGuard key and the rotation records, in one
        transaction. StoreConflict when another node holds the key; KeyError when the node is gone."""
        ...

    def touch(self, last_seen: Mapping[int, datetime]) -> None: ...

    def add_policy(
        self, text: str, author: str, action: str, restored: int | None, now: datetime
    ) -> PolicyRecord:
        """Store a new policy version (the highest so far, plus one) with its audit entry."""
        ...

    def policy_history(self) -> list[PolicyRecord]:
        """Every policy version, oldest first."""
        ...

    def close(self) -> None: ...
