"""`Store` on SQLAlchemy Core: SQLite by default (WAL, foreign keys, full sync), PostgreSQL by URL
(psycopg 3), both migrated by Alembic at start-up.

Schema and migrations:
- `metadata` below is the schema this code reads and writes; `controller/migrations/versions/` holds
  the Alembic revisions that build it, one linear chain (`0001_baseline`, `0002_policy_versions` and
  `0003_key_rotations` are the pre-Alembic `schema_version` 1 to 3: an existing database is stamped,
  never re-created).
- Start-up upgrades the database to the head revision in one transaction (PostgreSQL: under an
  advisory lock, so replicas starting together migrate once). A database at a revision this code does
  not know (a newer wgmesh wrote it) is refused, not guessed at.
- To add a migration: change `metadata`, then add `controller/migrations/versions/NNNN_what.py` with
  `revision = "NNNN_what"`, `down_revision = "<the current head>"` and `upgrade()` / `downgrade()`
  written with `alembic.op` (in SQLite, change constraints or column types inside
  `op.batch_alter_table`; adding a nullable column or a table needs no batch). Never edit a landed
  revision. tests/component/test_controller_store.py checks there is one head and that the migrated
  schema matches `metadata` on both databases; run it (`make test` starts a PostgreSQL for it).

Replicas: every write the mesh model must see bumps `mesh_version` and appends `changes` rows in the
same transaction (`_bump`), and on PostgreSQL sends `NOTIFY wgmesh_changes` (delivered at commit: a
wake-up only, the log is the truth). Writes that decide on the caller's view name the version it is
at; the row lock on `mesh_version` (SQLite: BEGIN IMMEDIATE) serializes them across replicas.
The log is pruned to the last `CHANGES_KEPT` versions; a replica further behind reloads everything.

SQLite write transactions start with BEGIN IMMEDIATE, so two writers serialize instead of failing
halfway. Timestamps are stored as naive UTC and come back timezone-aware.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from controller.ipam import AddressHold
from controller.mesh import MapState
from controller.rotation import NodeRotation
from controller.store import (
    AuditEntry,
    AuditQuery,
    ChangeBatch,
    KeyRefused,
    NodeRecord,
    NodeRemoved,
    NodeWrite,
    PolicyRecord,
    PreAuthKeyRecord,
    RemovedNodeRecord,
    Snapshot,
    StaleVersion,
    StoreConflict,
    StoreUnavailable,
    key_refusal,
)
from controller.topology import MAX_HANDSHAKE_AGE_S, LinkRecord, Sample, SampleRecord
from wire.audit import AuditEvent

SCHEMA_VERSION = 4
"""What `schema_version` holds once Alembic manages the database; wgmesh before Alembic knew only 1
2 or 3 and so refuses a migrated database."""
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
NOTIFY_CHANNEL = "wgmesh_changes"
CHANGES_KEPT = 10_000
_MIGRATION_LOCK = 0x77676D65  # pg_advisory_xact_lock key: "wgme"


class StoreError(Exception):
    """The database cannot be opened or used; the message says why."""


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


metadata = sa.MetaData()

schema_version = sa.Table("schema_version", metadata, sa.Column("version", sa.Integer, nullable=False))

preauth_keys = sa.Table(
    "preauth_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("reusable", sa.Boolean, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=True),
    sa.Column("revoked", sa.Boolean, nullable=False, default=False),
    sa.Column("used_count", sa.Integer, nullable=False, default=0),
    sa.Column("tags", sa.Text, nullable=True),  # JSON list; NULL: none given (nodes carry their role)
    sqlite_autoincrement=True,
)

nodes = sa.Table(
    "nodes",
    metadata,
    # AUTOINCREMENT: SQLite never hands out an id again, even after the highest row is deleted.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(253), nullable=False, unique=True),
    sa.Column("hostname", sa.String(253), nullable=False),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("wg_public_key", sa.String(44), nullable=False, unique=True),
    sa.Column("identity_public_key", sa.String(44), nullable=False, unique=True),
    sa.Column("tunnel_address", sa.String(45), nullable=False, unique=True),
    sa.Column("endpoints", sa.Text, nullable=False),
    sa.Column("listen_port", sa.Integer, nullable=False),
    sa.Column("enrolled_at", UtcDateTime, nullable=False),
    sa.Column("last_seen", UtcDateTime, nullable=True),
    sa.Column("preauth_key_id", sa.Integer, sa.ForeignKey("preauth_keys.id", ondelete="SET NULL")),
    sa.Column("credential_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("tags", sa.Text, nullable=True),  # JSON list; NULL: its role is its only tag
    sqlite_autoincrement=True,
)

map_states = sa.Table(
    "map_states",
    metadata,
    sa.Column("node_id", sa.Integer, sa.ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("serial", sa.Integer, nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
)

links = sa.Table(
    "links",
    metadata,
    sa.Column("a", sa.Integer, sa.ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("b", sa.Integer, sa.ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("weight", sa.Float, nullable=True),
    sa.Column("down_since", UtcDateTime, nullable=True),
    sa.CheckConstraint("a < b", name="links_ordered"),
)

# Link samples replicas share (controller.topology: an end's latest report of a contested link, and every
# sample the replica that wrote a link record held for it): the other replicas need them to decide.
link_samples = sa.Table(
    "link_samples",
    metadata,
    sa.Column("a", sa.Integer, sa.ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("b", sa.Integer, sa.ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("reporter", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("rtt_ms", sa.Float, nullable=True),
    sa.Column("loss", sa.Float, nullable=True),
    sa.Column("handshake_age_s", sa.Float, nullable=True),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("smoothed", sa.Float, nullable=True),
    sa.Column("far_below", sa.Boolean, nullable=False),
    sa.CheckConstraint("a < b", name="link_samples_ordered"),
    sa.CheckConstraint("reporter = a OR reporter = b", name="link_samples_end"),
)

address_holds = sa.Table(
    "address_holds",
    metadata,
    sa.Column("address", sa.String(45), primary_key=True),
    sa.Column("holder", sa.Integer, sa.ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("min_serial", sa.Integer, nullable=False),
    # releases go by holder (every node acknowledging a map without the address): without the index
    # each is a scan of every hold, and a removal at 5,000 nodes leaves 5,000 holds to release
    sa.Index("address_holds_holder", "holder"),
)

mesh_version = sa.Table(
    "mesh_version",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.CheckConstraint("id = 1", name="mesh_version_one_row"),
)

changes = sa.Table(
    "changes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("version", sa.BigInteger, nullable=False, index=True),
    # "node": node_id enrolled, changed or removed; "link": link (node_id, peer_id) written;
    # "policy": a new policy version; "rotation": node_id's key rotation record written
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("node_id", sa.Integer, nullable=True),
    sa.Column("peer_id", sa.Integer, nullable=True),
    sqlite_autoincrement=True,
)

# Every version of the access policy; a row is never changed or deleted (it is the audit trail too).
policy_versions = sa.Table(
    "policy_versions",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("author", sa.String(200), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("restored", sa.Integer, nullable=True),
    sa.Column("text", sa.Text, nullable=False),
)

# One row per node that has a rotation record: controller.rotation.NodeRotation as JSON (its shape is
# the rotation book's business; the store only keeps it).
key_rotations = sa.Table(
    "key_rotations",
    metadata,
    sa.Column("node_id", sa.Integer, sa.ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("record", sa.Text, nullable=False),
)


# Nodes an admin removed: their keys are refused at enrollment and their credential answered 410 until
# an admin allows them again (the row is deleted then).
removed_nodes = sa.Table(
    "removed_nodes",
    metadata,
    sa.Column("node_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(253), nullable=False),
    sa.Column("wg_public_key", sa.String(44), nullable=False, index=True),
    sa.Column("identity_public_key", sa.String(44), nullable=False, index=True),
    sa.Column("credential_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("removed_at", UtcDateTime, nullable=False),
)


# The audit trail (wire.audit): rows are only ever added; the oldest go beyond AUDIT_KEPT.
audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", UtcDateTime, nullable=False, index=True),
    sa.Column("actor", sa.String(300), nullable=False),
    sa.Column("action", sa.String(32), nullable=False, index=True),
    sa.Column("result", sa.String(16), nullable=False),
    sa.Column("source", sa.String(64), nullable=True),
    sa.Column("node_id", sa.Integer, nullable=True, index=True),
    sa.Column("node_name", sa.String(253), nullable=True),
    sa.Column("policy_version", sa.Integer, nullable=True),
    sa.Column("detail", sa.Text, nullable=False),
    sqlite_autoincrement=True,
)
AUDIT_KEPT = 1_000_000


# Enrollment nonces outstanding (controller.nonces): any replica takes a nonce another issued, once.
enroll_nonces = sa.Table(
    "enroll_nonces",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("nonce", sa.String(64), nullable=False, unique=True),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sqlite_autoincrement=True,
)

# The managed TLS CA (controller.tls), one row: every replica issues its server certificate from it, so
# the pin in pre-auth keys holds for all of them. Whoever reads this database can impersonate the
# controller to agents; whoever writes it can already enroll anything, so it is kept with the rest.
tls_ca = sa.Table(
    "tls_ca",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("key_pem", sa.Text, nullable=False),
    sa.Column("cert_pem", sa.Text, nullable=False),
    sa.CheckConstraint("id = 1", name="tls_ca_one_row"),
)


class SqlStore:
    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self._engine = _engine(url)
            self._migrate()
        except ModuleNotFoundError as e:
            raise StoreError(f"database {_safe(url)}: driver missing ({e.name}); install it") from None
        except SQLAlchemyError as e:
            raise StoreError(f"database {_safe(url)}: {_first_line(e)}") from None
        self.postgres = self._engine.dialect.name == "postgresql"
        # The controller calls the store from several threads; an in-memory SQLite database is one
        # connection (StaticPool), whose transactions must not interleave: one at a time there.
        shared = isinstance(self._engine.pool, StaticPool)
        self._one_connection: contextlib.AbstractContextManager[object] = (
            threading.RLock() if shared else contextlib.nullcontext()
        )
        self._upsert = postgresql.insert if self.postgres else sqlite.insert

    # --- lifecycle -------------------------------------------------------------------------------

    def _migrate(self) -> None:
        from alembic.runtime.environment import EnvironmentContext
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory
        from alembic.util.exc import CommandError

        config = _alembic_config()
        script = ScriptDirectory.from_config(config)
        head = script.get_current_head()
        with self._engine.begin() as c:
            if c.dialect.name == "postgresql":
                c.execute(sa.text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))
            current = MigrationContext.configure(c).get_current_heads()
            for revision in current:
                try:
                    script.get_revision(revision)
                except CommandError:
                    raise StoreError(
                        f"database {_safe(self.url)} has schema revision {revision}, newer than this "
                        f"wgmesh understands ({head}); upgrade wgmesh"
                    ) from None
            stamp: str | None = None
            if not current and sa.inspect(c).has_table("schema_version"):
                legacy = c.execute(sa.select(schema_version.c.version)).scalar()
                if legacy is not None and legacy > 3:
                    raise StoreError(
                        f"database {_safe(self.url)} has schema version {legacy}, newer than this "
                        f"wgmesh understands ({SCHEMA_VERSION}); upgrade wgmesh"
                    )
                # Made by wgmesh before Alembic: its versions 1 to 3 are these revisions.
                stamp = {1: "0001_baseline", 2: "0002_policy_versions", 3: "0003_key_rotations"}.get(
                    legacy or 0
                )

            def upgrade(rev: Any, _context: Any) -> Any:
                return script._upgrade_revs("head", rev)

            with EnvironmentContext(config, script, fn=upgrade, destination_rev="head") as env:
                env.configure(connection=c, render_as_batch=True)
                if stamp:
                    env.get_context().stamp(script, stamp)
                with env.begin_transaction():
                    env.run_migrations()

    def schema_version(self) -> int:
        with self._engine.begin() as c:
            return int(c.execute(sa.select(schema_version.c.version)).scalar_one())

    def schema_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self._engine.begin() as c:
            return MigrationContext.configure(c).get_current_revision()

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _tx(self, snapshot: bool = False) -> Iterator[Connection]:
        """One transaction; a lost or refusing database becomes StoreUnavailable.
        `snapshot`: every statement sees the same committed state (PostgreSQL REPEATABLE READ)."""
        try:
            with self._one_connection, self._engine.connect() as conn:
                if snapshot and self.postgres:
                    conn = conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    yield conn
        except OperationalError as e:
            raise StoreUnavailable(f"database unavailable: {_first_line(e)}") from None
        except SQLAlchemyError as e:
            if isinstance(e, IntegrityError):
                raise
            raise StoreUnavailable(f"database error: {_first_line(e)}") from None

    # --- reads -----------------------------------------------------------------------------------

    def load(self) -> Snapshot:
        with self._tx(snapshot=True) as c:
            version = c.execute(sa.select(mesh_version.c.version)).scalar_one()
            node_rows = c.execute(sa.select(nodes).order_by(nodes.c.id)).all()
            link_rows = c.execute(sa.select(links)).all()
            sample_rows = c.execute(sa.select(link_samples)).all()
            map_rows = c.execute(sa.select(map_states)).all()
            hold_rows = c.execute(sa.select(address_holds)).all()
            policy_row = c.execute(
                sa.select(policy_versions).order_by(policy_versions.c.version.desc()).limit(1)
            ).first()
            rotation_rows = c.execute(sa.select(key_rotations)).all()
        return Snapshot(
            policy=None if policy_row is None else _policy(policy_row),
            nodes=[_node(r) for r in node_rows],
            links=[_link(r) for r in link_rows],
            samples=[_sample(r) for r in sample_rows],
            maps={r.node_id: MapState(r.serial, r.digest) for r in map_rows},
            holds=[_hold(r) for r in hold_rows],
            rotations=[_rotation(r.record) for r in rotation_rows],
            version=int(version),
        )

    def listen_url(self) -> str | None:
        return self.url if self.postgres else None

    def version(self) -> int:
        with self._tx() as c:
            return int(c.execute(sa.select(mesh_version.c.version)).scalar_one())

    def changes_since(self, since: int) -> ChangeBatch | None:
        with self._tx(snapshot=True) as c:
            version = int(c.execute(sa.select(mesh_version.c.version)).scalar_one())
            if version == since:
                return ChangeBatch(since, version, [], [], [], [])
            rows = c.execute(
                sa.select(changes).where(changes.c.version > since).order_by(changes.c.version, changes.c.id)
            ).all()
            if version < since or not rows or rows[0].version != since + 1:
                return None
            node_ids = {r.node_id for r in rows if r.kind == "node"}
            pairs = {(r.node_id, r.peer_id) for r in rows if r.kind == "link"}
            node_rows = (
                c.execute(sa.select(nodes).where(nodes.c.id.in_(node_ids)).order_by(nodes.c.id)).all()
                if node_ids
                else []
            )
            link_rows: Sequence[sa.Row[Any]] = []
            sample_rows: Sequence[sa.Row[Any]] = []
            if pairs:
                link_rows = c.execute(
                    sa.select(links).where(sa.tuple_(links.c.a, links.c.b).in_(pairs))
                ).all()
                sample_rows = c.execute(
                    sa.select(link_samples).where(sa.tuple_(link_samples.c.a, link_samples.c.b).in_(pairs))
                ).all()
            hold_rows = c.execute(sa.select(address_holds)).all()
            policy_row = None
            if any(r.kind == "policy" for r in rows):
                policy_row = c.execute(
                    sa.select(policy_versions).order_by(policy_versions.c.version.desc()).limit(1)
                ).first()
            rotated = {r.node_id for r in rows if r.kind == "rotation"}
            rotation_rows = (
                c.execute(sa.select(key_rotations.c.record).where(key_rotations.c.node_id.in_(rotated))).all()
                if rotated
                else []
            )
        present = {r.id for r in node_rows}
        return ChangeBatch(
            since=since,
            version=version,
            nodes=[_node(r) for r in node_rows],
            removed=sorted(node_ids - present),
            links=[_link(r) for r in link_rows],
            samples=[_sample(r) for r in sample_rows],
            holds=[_hold(r) for r in hold_rows],
            policy=None if policy_row is None else _policy(policy_row),
            rotations=[_rotation(r.record) for r in rotation_rows],
        )

    def list_preauth_keys(self) -> list[PreAuthKeyRecord]:
        with self._tx() as c:
            return [_key(r) for r in c.execute(sa.select(preauth_keys).order_by(preauth_keys.c.id))]

    # --- writes ----------------------------------------------------------------------------------

    def create_preauth_key(
        self,
        key_hash: str,
        role: str,
        reusable: bool,
        created_at: datetime,
        expires_at: datetime | None,
        tags: Sequence[str] | None = None,
    ) -> PreAuthKeyRecord:
        with self._tx() as c:
            key_id = _new_id(
                c,
                preauth_keys.insert().values(
                    key_hash=key_hash,
                    role=role,
                    tags=_tags_json(tags),
                    reusable=reusable,
                    created_at=created_at,
                    expires_at=expires_at,
                    revoked=False,
                    used_count=0,
                ),
            )
            return _key(c.execute(sa.select(preauth_keys).where(preauth_keys.c.id == key_id)).one())

    def revoke_preauth_key(self, key_id: int) -> PreAuthKeyRecord | None:
        with self._tx() as c:
            c.execute(preauth_keys.update().where(preauth_keys.c.id == key_id).values(revoked=True))
            row = c.execute(sa.select(preauth_keys).where(preauth_keys.c.id == key_id)).first()
            return None if row is None else _key(row)

    def find_preauth_key(self, key_hash: str) -> PreAuthKeyRecord | None:
        with self._tx() as c:
            row = c.execute(sa.select(preauth_keys).where(preauth_keys.c.key_hash == key_hash)).first()
            return None if row is None else _key(row)

    def enroll(
        self,
        key_hash: str,
        node: NodeWrite,
        now: datetime,
        at_version: int | None = None,
        rotations: Callable[[int], Sequence[NodeRotation]] | None = None,
    ) -> NodeRecord:
        try:
            with self._tx() as c:
                version = self._lock_version(c, at_version)
                record = self._enroll(c, key_hash, node, now)
                saved = self._save_rotations(c, rotations(record.node_id)) if rotations else []
                self._bump(
                    c, version, [("node", record.node_id, None), *(("rotation", n, None) for n in saved)]
                )
                return record
        except IntegrityError as e:
            raise StoreConflict(f"already in use: {_constraint(e)}") from None

    def _enroll(self, c: Connection, key_hash: str, node: NodeWrite, now: datetime) -> NodeRecord:
        k = preauth_keys.c
        key = c.execute(sa.select(preauth_keys).where(k.key_hash == key_hash)).first()
        refusal = key_refusal(None if key is None else _key(key), now)
        if refusal is not None or key is None:
            raise KeyRefused(refusal or "unknown pre-auth key")
        r = removed_nodes.c
        gone = c.execute(
            sa.select(removed_nodes).where(
                sa.or_(
                    r.identity_public_key == node.identity_public_key, r.wg_public_key == node.wg_public_key
                )
            )
        ).first()
        if gone is not None:
            raise NodeRemoved(
                f"these keys belong to node {gone.node_id} ({gone.name}), removed from the mesh at "
                f"{gone.removed_at.isoformat(timespec='seconds')}: refused until an admin runs "
                f"`wgmesh nodes allow {gone.node_id}`"
            )
        existing = None
        if node.node_id is not None:
            existing = c.execute(sa.select(nodes).where(nodes.c.id == node.node_id)).first()
        # A host that re-enrolls with the single-use key it enrolled with (say its first answer was
        # lost) does not use the key again; any other use is counted, atomically.
        again_with_own_key = existing is not None and existing.preauth_key_id == key.id
        if key.reusable or not again_with_own_key:
            conditions = [
                k.id == key.id,
                k.revoked.is_(False),
                sa.or_(k.expires_at.is_(None), k.expires_at > now),
            ]
            if not key.reusable:
                conditions.append(k.used_count == 0)
            used = c.execute(preauth_keys.update().where(*conditions).values(used_count=k.used_count + 1))
            if used.rowcount != 1:
                raise KeyRefused(f"single-use pre-auth key {key.id} was already used")
        values: dict[str, Any] = {
            "name": node.name,
            "hostname": node.hostname,
            "role": key.role,
            "wg_public_key": node.wg_public_key,
            "identity_public_key": node.identity_public_key,
            "tunnel_address": str(node.tunnel_address),
            "endpoints": json.dumps(list(node.endpoints)),
            "listen_port": node.listen_port,
            "preauth_key_id": key.id,
            "credential_hash": node.credential_hash,
        }
        if existing is not None:
            node_id = existing.id  # it keeps its tags, whichever key it comes back with
            c.execute(nodes.update().where(nodes.c.id == node_id).values(**values))
        else:
            node_id = _new_id(c, nodes.insert().values(enrolled_at=now, tags=key.tags, **values))
        return _node(c.execute(sa.select(nodes).where(nodes.c.id == node_id)).one())

    def remove_node(
        self,
        node_id: int,
        holds: Sequence[AddressHold],
        removed_at: datetime,
        at_version: int | None = None,
        rotations: Sequence[NodeRotation] = (),
    ) -> bool:
        with self._tx() as c:
            version = self._lock_version(c, at_version)
            row = c.execute(sa.select(nodes).where(nodes.c.id == node_id)).first()
            if row is not None:
                c.execute(
                    removed_nodes.insert().values(
                        node_id=row.id,
                        name=row.name,
                        wg_public_key=row.wg_public_key,
                        identity_public_key=row.identity_public_key,
                        credential_hash=row.credential_hash,
                        removed_at=removed_at,
                    )
                )
            gone = c.execute(nodes.delete().where(nodes.c.id == node_id)).rowcount == 1
            if gone and holds:
                c.execute(
                    address_holds.insert(),
                    [
                        {"address": str(h.address), "holder": h.holder, "min_serial": h.min_serial}
                        for h in holds
                    ],
                )
            if gone:
                saved = self._save_rotations(c, rotations)
                self._bump(c, version, [("node", node_id, None), *(("rotation", n, None) for n in saved)])
            return gone

    def removed_nodes(self) -> list[RemovedNodeRecord]:
        with self._tx() as c:
            rows = c.execute(sa.select(removed_nodes).order_by(removed_nodes.c.node_id)).all()
        return [_removed(r) for r in rows]

    def removed_by_credential(self, credential_hash: str) -> RemovedNodeRecord | None:
        with self._tx() as c:
            row = c.execute(
                sa.select(removed_nodes).where(removed_nodes.c.credential_hash == credential_hash)
            ).first()
        return None if row is None else _removed(row)

    def allow_removed(self, node_id: int) -> RemovedNodeRecord | None:
        with self._tx() as c:
            row = c.execute(sa.select(removed_nodes).where(removed_nodes.c.node_id == node_id)).first()
            if row is not None:
                c.execute(removed_nodes.delete().where(removed_nodes.c.node_id == node_id))
        return None if row is None else _removed(row)

    def save_maps(self, maps: Mapping[int, MapState]) -> None:
        if not maps:
            return
        stmt = self._upsert(map_states)
        stmt = stmt.on_conflict_do_update(
            index_elements=[map_states.c.node_id],
            set_={"serial": stmt.excluded.serial, "digest": stmt.excluded.digest},
            where=map_states.c.serial < stmt.excluded.serial,
        )
        rows = [{"node_id": n, "serial": s.serial, "digest": s.digest} for n, s in maps.items()]
        with self._tx() as c:
            # A node another replica removed meanwhile has no row to refer to: skip it.
            present = set(c.execute(sa.select(nodes.c.id).where(nodes.c.id.in_(list(maps)))).scalars())
            rows = [r for r in rows if r["node_id"] in present]
            if rows:
                c.execute(stmt, rows)

    def save_links(self, records: Sequence[LinkRecord], samples: Sequence[SampleRecord] = ()) -> int:
        stmt = self._upsert(links)
        stmt = stmt.on_conflict_do_update(
            index_elements=[links.c.a, links.c.b],
            set_={"weight": stmt.excluded.weight, "down_since": stmt.excluded.down_since},
        )
        keep = self._upsert(link_samples)
        keep = keep.on_conflict_do_update(
            index_elements=[link_samples.c.a, link_samples.c.b, link_samples.c.reporter],
            set_={name: keep.excluded[name] for name in _SAMPLE_VALUES},
        )
        with self._tx() as c:
            version = self._lock_version(c, None)
            if not records and not samples:
                return version
            ends = {n for r in records for n in (r.a, r.b)} | {n for r in samples for n in (r.a, r.b)}
            present = set(c.execute(sa.select(nodes.c.id).where(nodes.c.id.in_(ends))).scalars())
            kept = [r for r in records if r.a in present and r.b in present]
            shared = [r for r in samples if r.a in present and r.b in present]
            if not kept and not shared:
                return version
            if kept:
                c.execute(
                    stmt, [{"a": r.a, "b": r.b, "weight": r.weight, "down_since": r.down_since} for r in kept]
                )
                # a link written keeps exactly the samples its writer held
                c.execute(
                    link_samples.delete().where(
                        link_samples.c.a == sa.bindparam("la"), link_samples.c.b == sa.bindparam("lb")
                    ),
                    [{"la": r.a, "lb": r.b} for r in kept],
                )
            if shared:
                c.execute(keep, [_sample_row(r) for r in shared])
            touched = sorted({(r.a, r.b) for r in kept} | {(r.a, r.b) for r in shared})
            return self._bump(c, version, [("link", a, b) for a, b in touched])

    def release_holds(self, released: Mapping[int, int]) -> None:
        if not released:
            return
        with self._tx() as c:
            c.execute(
                address_holds.delete().where(
                    address_holds.c.holder == sa.bindparam("holder"),
                    address_holds.c.min_serial <= sa.bindparam("serial"),
                ),
                [{"holder": h, "serial": s} for h, s in released.items()],
            )

    def save_rotations(self, records: Sequence[NodeRotation], at_version: int | None = None) -> int:
        with self._tx() as c:
            version = self._lock_version(c, at_version)
            saved = self._save_rotations(c, records)
            if not saved:
                return version
            return self._bump(c, version, [("rotation", n, None) for n in saved])

    def _save_rotations(self, c: Connection, records: Sequence[NodeRotation]) -> list[int]:
        """Write the records of nodes still there; their ids."""
        if not records:
            return []
        known = {r.node_id for r in records}
        present = set(c.execute(sa.select(nodes.c.id).where(nodes.c.id.in_(known))).scalars())
        rows = [{"node_id": r.node_id, "record": _rotation_json(r)} for r in records if r.node_id in present]
        if not rows:
            return []
        stmt = self._upsert(key_rotations)
        stmt = stmt.on_conflict_do_update(
            index_elements=[key_rotations.c.node_id], set_={"record": stmt.excluded.record}
        )
        c.execute(stmt, rows)
        return sorted({r.node_id for r in records if r.node_id in present})

    def record_key(
        self,
        node_id: int,
        wg_public_key: str,
        rotations: Sequence[NodeRotation],
        at_version: int | None = None,
    ) -> NodeRecord:
        try:
            with self._tx() as c:
                version = self._lock_version(c, at_version)
                done = c.execute(
                    nodes.update().where(nodes.c.id == node_id).values(wg_public_key=wg_public_key)
                )
                if done.rowcount != 1:
                    raise KeyError(node_id)
                saved = self._save_rotations(c, rotations)
                self._bump(c, version, [("node", node_id, None), *(("rotation", n, None) for n in saved)])
                return _node(c.execute(sa.select(nodes).where(nodes.c.id == node_id)).one())
        except IntegrityError as e:
            raise StoreConflict(f"already in use: {_constraint(e)}") from None

    def set_tags(self, node_id: int, tags: Sequence[str] | None) -> NodeRecord:
        with self._tx() as c:
            version = self._lock_version(c, None)
            done = c.execute(nodes.update().where(nodes.c.id == node_id).values(tags=_tags_json(tags)))
            if done.rowcount != 1:
                raise KeyError(node_id)
            self._bump(c, version, [("node", node_id, None)])
            return _node(c.execute(sa.select(nodes).where(nodes.c.id == node_id)).one())

    def touch(self, last_seen: Mapping[int, datetime]) -> None:
        if not last_seen:
            return
        with self._tx() as c:
            c.execute(
                nodes.update()
                .where(nodes.c.id == sa.bindparam("node_id"))
                .values(last_seen=sa.bindparam("seen")),
                [{"node_id": n, "seen": t} for n, t in last_seen.items()],
            )

    def last_seen(self) -> dict[int, datetime]:
        with self._tx() as c:
            rows = c.execute(sa.select(nodes.c.id, nodes.c.last_seen).where(nodes.c.last_seen.is_not(None)))
            return {r.id: r.last_seen for r in rows}

    # --- enrollment nonces and the managed CA ------------------------------------------------------

    def add_nonce(self, nonce: str, expires_at: datetime, now: datetime, capacity: int) -> None:
        n = enroll_nonces.c
        with self._tx() as c:
            c.execute(enroll_nonces.delete().where(n.expires_at <= now))
            new = _new_id(c, enroll_nonces.insert().values(nonce=nonce, expires_at=expires_at))
            c.execute(enroll_nonces.delete().where(n.id <= new - capacity))

    def take_nonce(self, nonce: str, now: datetime) -> bool:
        n = enroll_nonces.c
        with self._tx() as c:
            return c.execute(enroll_nonces.delete().where(n.nonce == nonce, n.expires_at > now)).rowcount == 1

    def nonce_count(self) -> int:
        with self._tx() as c:
            return int(c.execute(sa.select(sa.func.count()).select_from(enroll_nonces)).scalar_one())

    def share_tls_ca(self, key_pem: str, cert_pem: str) -> tuple[str, str]:
        """Keep this CA unless the database keeps one already; the CA kept (key, certificate)."""
        stmt = self._upsert(tls_ca).values(id=1, key_pem=key_pem, cert_pem=cert_pem)
        with self._tx() as c:
            c.execute(stmt.on_conflict_do_nothing(index_elements=[tls_ca.c.id]))
            row = c.execute(sa.select(tls_ca.c.key_pem, tls_ca.c.cert_pem)).one()
            return str(row.key_pem), str(row.cert_pem)

    # --- the mesh version ------------------------------------------------------------------------

    def _lock_version(self, c: Connection, at_version: int | None) -> int:
        """Take the version row for this transaction; StaleVersion when it is not `at_version`."""
        query = sa.select(mesh_version.c.version).where(mesh_version.c.id == 1)
        version = int(c.execute(query.with_for_update() if self.postgres else query).scalar_one())
        if at_version is not None and version != at_version:
            raise StaleVersion(f"the mesh is at version {version}, not {at_version}")
        return version

    def _bump(
        self, c: Connection, version: int, touched: Sequence[tuple[str, int | None, int | None]]
    ) -> int:
        """Log `touched` as version+1 and make it the mesh version; the caller holds the row lock."""
        new = version + 1
        c.execute(mesh_version.update().where(mesh_version.c.id == 1).values(version=new))
        c.execute(
            changes.insert(), [{"version": new, "kind": k, "node_id": n, "peer_id": p} for k, n, p in touched]
        )
        if new % 1000 == 0:
            c.execute(changes.delete().where(changes.c.version <= new - CHANGES_KEPT))
        if self.postgres:
            c.execute(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL, str(new))))
        return new

    def add_policy(
        self, text: str, author: str, action: str, restored: int | None, now: datetime
    ) -> PolicyRecord:
        p = policy_versions.c
        with self._tx() as c:
            self._bump(c, self._lock_version(c, None), [("policy", None, None)])
            version = int(c.execute(sa.select(sa.func.coalesce(sa.func.max(p.version), 0))).scalar_one()) + 1
            values = {"version": version, "created_at": now, "author": author, "action": action}
            c.execute(policy_versions.insert().values(restored=restored, text=text, **values))
            return _policy(c.execute(sa.select(policy_versions).where(p.version == version)).one())

    def policy_history(self) -> list[PolicyRecord]:
        with self._tx() as c:
            rows = c.execute(sa.select(policy_versions).order_by(policy_versions.c.version)).all()
        return [_policy(r) for r in rows]

    def add_audit(self, entry: AuditEntry) -> int:
        with self._tx() as c:
            values = dataclasses.asdict(entry)
            values["detail"] = values["detail"][:1000]
            event_id = _new_id(c, audit_events.insert().values(**values))
            if event_id % 1000 == 0:
                c.execute(audit_events.delete().where(audit_events.c.id <= event_id - AUDIT_KEPT))
            return event_id

    def audit_events(self, query: AuditQuery) -> list[AuditEvent]:
        a = audit_events.c
        conditions = []
        if query.since is not None:
            conditions.append(a.at >= query.since)
        if query.node is not None:
            by_name = a.node_name == query.node
            # an id is ASCII digits ('³' is a digit int() refuses) within SQL's 64-bit integers
            is_id = query.node.isascii() and query.node.isdigit() and int(query.node) < 2**63
            conditions.append(sa.or_(a.node_id == int(query.node), by_name) if is_id else by_name)
        if query.action is not None:
            conditions.append(sa.or_(a.action == query.action, a.action.startswith(query.action + ".")))
        select = sa.select(audit_events).where(*conditions).order_by(a.id.desc()).limit(query.limit)
        with self._tx() as c:
            rows = c.execute(select).all()
        return [AuditEvent.model_validate(r._asdict()) for r in reversed(rows)]


def _policy(r: sa.Row[Any]) -> PolicyRecord:
    return PolicyRecord(r.version, r.created_at, r.author, r.action, r.restored, r.text)


def _alembic_config() -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def engine_url(url: str) -> sa.URL:
    """The SQLAlchemy URL: plain postgresql:// means psycopg 3 (SQLAlchemy's default is psycopg2)."""
    parsed = sa.engine.make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


# A lost server must show within seconds, not after TCP's minutes: bounded connects, statements,
# lock waits and unacknowledged sends.
PG_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 3,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 2,
    "tcp_user_timeout": 5000,
    "options": "-c statement_timeout=10000 -c lock_timeout=10000",
}


def listen_conninfo(url: str) -> tuple[str, dict[str, Any]]:
    """For a connection of our own outside SQLAlchemy (LISTEN): a libpq URL and connect options."""
    parsed = sa.engine.make_url(url).set(drivername="postgresql")
    options = {k: v for k, v in PG_CONNECT_ARGS.items() if k != "options"}
    return parsed.render_as_string(hide_password=False), options


def _engine(url: str) -> Engine:
    parsed = engine_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(
            parsed,
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=5,
            pool_timeout=5,
            connect_args=PG_CONNECT_ARGS,
        )
    memory = parsed.database in (None, "", ":memory:")
    if not memory and parsed.database:
        try:
            # Create a missing directory private; never change the mode of an existing one.
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise StoreError(
                f"database directory {Path(parsed.database).parent}: {e.strerror or e}"
            ) from None
    extra: dict[str, Any] = {"poolclass": StaticPool} if memory else {}
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **extra)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transactions into our own hands: pysqlite's implicit BEGIN is deferred.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "foreign_keys=ON", "synchronous=FULL", "busy_timeout=30000"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _new_id(c: Connection, insert: sa.Insert) -> int:
    key = c.execute(insert).inserted_primary_key
    if key is None:
        raise StoreError("the database returned no id for a new row")
    return int(key[0])


def _node(r: sa.Row[Any]) -> NodeRecord:
    return NodeRecord(
        node_id=r.id,
        name=r.name,
        hostname=r.hostname,
        role=r.role,
        wg_public_key=r.wg_public_key,
        identity_public_key=r.identity_public_key,
        tunnel_address=ipaddress.ip_address(r.tunnel_address),
        endpoints=tuple(json.loads(r.endpoints)),
        listen_port=r.listen_port,
        enrolled_at=r.enrolled_at,
        last_seen=r.last_seen,
        preauth_key_id=r.preauth_key_id,
        credential_hash=r.credential_hash,
        tags=_tags(r.tags),
    )


def _link(r: sa.Row[Any]) -> LinkRecord:
    return LinkRecord(r.a, r.b, r.weight, r.down_since)


_SAMPLE_VALUES = ("rtt_ms", "loss", "handshake_age_s", "at", "smoothed", "far_below")


def _sample_row(r: SampleRecord) -> dict[str, Any]:
    s = r.sample
    age = None if s.handshake_age_s is None else min(s.handshake_age_s, MAX_HANDSHAKE_AGE_S)
    return {
        "a": r.a,
        "b": r.b,
        "reporter": r.end,
        "rtt_ms": s.rtt_ms,
        "loss": s.loss,
        "handshake_age_s": age,
        "at": s.at,
        "smoothed": s.smoothed,
        "far_below": s.far_below,
    }


def _sample(r: sa.Row[Any]) -> SampleRecord:
    sample = Sample(r.rtt_ms, r.loss, r.handshake_age_s, r.at, r.smoothed, bool(r.far_below))
    return SampleRecord(r.a, r.b, r.reporter, sample)


def _hold(r: sa.Row[Any]) -> AddressHold:
    return AddressHold(ipaddress.ip_address(r.address), r.holder, r.min_serial)


_ROTATION_TIMES = ("key_created_at", "requested_at", "finished_at")


def _rotation_json(r: NodeRotation) -> str:
    values = dataclasses.asdict(r)
    for name in _ROTATION_TIMES:
        if values[name] is not None:
            values[name] = values[name].isoformat()
    return json.dumps(values, sort_keys=True)


def _rotation(text: str) -> NodeRotation:
    values = json.loads(text)
    for name in _ROTATION_TIMES:
        if values.get(name) is not None:
            values[name] = datetime.fromisoformat(values[name])
    known = {f.name for f in dataclasses.fields(NodeRotation)}
    return NodeRotation(**{k: v for k, v in values.items() if k in known})


def _removed(r: sa.Row[Any]) -> RemovedNodeRecord:
    return RemovedNodeRecord(
        node_id=r.node_id,
        name=r.name,
        wg_public_key=r.wg_public_key,
        identity_public_key=r.identity_public_key,
        credential_hash=r.credential_hash,
        removed_at=r.removed_at,
    )


def _key(r: sa.Row[Any]) -> PreAuthKeyRecord:
    return PreAuthKeyRecord(
        id=r.id,
        role=r.role,
        reusable=bool(r.reusable),
        created_at=r.created_at,
        expires_at=r.expires_at,
        revoked=bool(r.revoked),
        used_count=r.used_count,
        tags=_tags(r.tags),
    )


def _tags_json(tags: Sequence[str] | None) -> str | None:
    return None if tags is None else json.dumps(sorted(set(tags)))


def _tags(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(json.loads(text))


def _constraint(e: IntegrityError) -> str:
    text = str(e.orig)
    for column in ("tunnel_address", "name", "wg_public_key", "identity_public_key", "credential_hash"):
        if column in text:
            return column.replace("_", " ")
    return _first_line(e)


def _first_line(e: BaseException) -> str:
    orig = getattr(e, "orig", None)
    return str(orig if orig is not None else e).splitlines()[0]


def _safe(url: str) -> str:
    """The URL without its password."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable URL>"
