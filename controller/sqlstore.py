"""`Store` on SQLAlchemy Core: SQLite by default (WAL, foreign keys, full sync), PostgreSQL by URL.

The schema is versioned: `schema_version` holds one integer, and `MIGRATIONS[n]` brings a database from
version n-1 to n inside one transaction. A database newer than this code is refused, not guessed at.
SQLite write transactions start with BEGIN IMMEDIATE, so two writers serialize instead of failing
halfway. Timestamps are stored as naive UTC and come back timezone-aware.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from controller.ipam import AddressHold
from controller.mesh import MapState
from controller.rotation import NodeRotation
from controller.store import (
    KeyRefused,
    NodeRecord,
    NodeWrite,
    PolicyRecord,
    PreAuthKeyRecord,
    Snapshot,
    StoreConflict,
)
from controller.topology import LinkRecord

SCHEMA_VERSION = 3


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

address_holds = sa.Table(
    "address_holds",
    metadata,
    sa.Column("address", sa.String(45), primary_key=True),
    sa.Column("holder", sa.Integer, sa.ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("min_serial", sa.Integer, nullable=False),
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


def _migrate_to_1(c: Connection) -> None:
    for table in (preauth_keys, nodes, map_states, links, address_holds):
        table.create(c)


def _migrate_to_2(c: Connection) -> None:
    policy_versions.create(c)


def _migrate_to_3(c: Connection) -> None:
    key_rotations.create(c)


MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _migrate_to_1, 2: _migrate_to_2, 3: _migrate_to_3}
"""version -> step from version-1. Append new steps; never edit a released one."""


def sqlite_url(path: str) -> str:
    return f"sqlite:///{path}"


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
        self._upsert = postgresql.insert if self._engine.dialect.name == "postgresql" else sqlite.insert

    # --- lifecycle -------------------------------------------------------------------------------

    def _migrate(self) -> None:
        with self._engine.begin() as c:
            schema_version.create(c, checkfirst=True)
            current = c.execute(sa.select(schema_version.c.version)).scalar()
            if current is None:
                current = 0
                c.execute(schema_version.insert().values(version=0))
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"database {_safe(self.url)} has schema version {current}, newer than this wgmesh "
                    f"understands ({SCHEMA_VERSION}); upgrade wgmesh"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[version](c)
                c.execute(schema_version.update().values(version=version))

    def schema_version(self) -> int:
        with self._engine.begin() as c:
            return int(c.execute(sa.select(schema_version.c.version)).scalar_one())

    def close(self) -> None:
        self._engine.dispose()

    # --- reads -----------------------------------------------------------------------------------

    def load(self) -> Snapshot:
        with self._engine.begin() as c:
            node_rows = c.execute(sa.select(nodes).order_by(nodes.c.id)).all()
            link_rows = c.execute(sa.select(links)).all()
            map_rows = c.execute(sa.select(map_states)).all()
            hold_rows = c.execute(sa.select(address_holds)).all()
            policy_row = c.execute(
                sa.select(policy_versions).order_by(policy_versions.c.version.desc()).limit(1)
            ).first()
            rotation_rows = c.execute(sa.select(key_rotations)).all()
        return Snapshot(
            policy=None if policy_row is None else _policy(policy_row),
            nodes=[_node(r) for r in node_rows],
            links=[LinkRecord(r.a, r.b, r.weight, r.down_since) for r in link_rows],
            maps={r.node_id: MapState(r.serial, r.digest) for r in map_rows},
            holds=[AddressHold(ipaddress.ip_address(r.address), r.holder, r.min_serial) for r in hold_rows],
            rotations=[_rotation(r.record) for r in rotation_rows],
        )

    def list_preauth_keys(self) -> list[PreAuthKeyRecord]:
        with self._engine.begin() as c:
            return [_key(r) for r in c.execute(sa.select(preauth_keys).order_by(preauth_keys.c.id))]

    # --- writes ----------------------------------------------------------------------------------

    def create_preauth_key(
        self, key_hash: str, role: str, reusable: bool, created_at: datetime, expires_at: datetime | None
    ) -> PreAuthKeyRecord:
        with self._engine.begin() as c:
            key_id = _new_id(
                c,
                preauth_keys.insert().values(
                    key_hash=key_hash,
                    role=role,
                    reusable=reusable,
                    created_at=created_at,
                    expires_at=expires_at,
                    revoked=False,
                    used_count=0,
                ),
            )
            return _key(c.execute(sa.select(preauth_keys).where(preauth_keys.c.id == key_id)).one())

    def revoke_preauth_key(self, key_id: int) -> PreAuthKeyRecord | None:
        with self._engine.begin() as c:
            c.execute(preauth_keys.update().where(preauth_keys.c.id == key_id).values(revoked=True))
            row = c.execute(sa.select(preauth_keys).where(preauth_keys.c.id == key_id)).first()
            return None if row is None else _key(row)

    def enroll(self, key_hash: str, node: NodeWrite, now: datetime) -> NodeRecord:
        try:
            with self._engine.begin() as c:
                return self._enroll(c, key_hash, node, now)
        except IntegrityError as e:
            raise StoreConflict(f"already in use: {_constraint(e)}") from None

    def _enroll(self, c: Connection, key_hash: str, node: NodeWrite, now: datetime) -> NodeRecord:
        k = preauth_keys.c
        key = c.execute(sa.select(preauth_keys).where(k.key_hash == key_hash)).first()
        if key is None:
            raise KeyRefused("unknown pre-auth key")
        if key.revoked:
            raise KeyRefused(f"pre-auth key {key.id} was revoked")
        if key.expires_at is not None and key.expires_at <= now:
            raise KeyRefused(
                f"pre-auth key {key.id} expired at {key.expires_at.isoformat(timespec='seconds')}"
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
            node_id = existing.id
            c.execute(nodes.update().where(nodes.c.id == node_id).values(**values))
        else:
            node_id = _new_id(c, nodes.insert().values(enrolled_at=now, **values))
        return _node(c.execute(sa.select(nodes).where(nodes.c.id == node_id)).one())

    def remove_node(self, node_id: int, holds: Sequence[AddressHold]) -> bool:
        with self._engine.begin() as c:
            gone = c.execute(nodes.delete().where(nodes.c.id == node_id)).rowcount == 1
            if gone and holds:
                c.execute(
                    address_holds.insert(),
                    [
                        {"address": str(h.address), "holder": h.holder, "min_serial": h.min_serial}
                        for h in holds
                    ],
                )
            return gone

    def save_maps(self, maps: Mapping[int, MapState]) -> None:
        if not maps:
            return
        stmt = self._upsert(map_states)
        stmt = stmt.on_conflict_do_update(
            index_elements=[map_states.c.node_id],
            set_={"serial": stmt.excluded.serial, "digest": stmt.excluded.digest},
        )
        with self._engine.begin() as c:
            c.execute(stmt, [{"node_id": n, "serial": s.serial, "digest": s.digest} for n, s in maps.items()])

    def save_links(self, records: Sequence[LinkRecord]) -> None:
        if not records:
            return
        stmt = self._upsert(links)
        stmt = stmt.on_conflict_do_update(
            index_elements=[links.c.a, links.c.b],
            set_={"weight": stmt.excluded.weight, "down_since": stmt.excluded.down_since},
        )
        with self._engine.begin() as c:
            c.execute(
                stmt,
                [{"a": r.a, "b": r.b, "weight": r.weight, "down_since": r.down_since} for r in records],
            )

    def release_holds(self, holder: int, up_to_serial: int) -> None:
        with self._engine.begin() as c:
            c.execute(
                address_holds.delete().where(
                    address_holds.c.holder == holder, address_holds.c.min_serial <= up_to_serial
                )
            )

    def save_rotations(self, records: Sequence[NodeRotation]) -> None:
        if not records:
            return
        with self._engine.begin() as c:
            self._save_rotations(c, records)

    def _save_rotations(self, c: Connection, records: Sequence[NodeRotation]) -> None:
        known = {r.node_id for r in records}
        present = set(c.execute(sa.select(nodes.c.id).where(nodes.c.id.in_(known))).scalars())
        rows = [{"node_id": r.node_id, "record": _rotation_json(r)} for r in records if r.node_id in present]
        if not rows:
            return
        stmt = self._upsert(key_rotations)
        stmt = stmt.on_conflict_do_update(
            index_elements=[key_rotations.c.node_id], set_={"record": stmt.excluded.record}
        )
        c.execute(stmt, rows)

    def record_key(self, node_id: int, wg_public_key: str, rotations: Sequence[NodeRotation]) -> NodeRecord:
        try:
            with self._engine.begin() as c:
                done = c.execute(
                    nodes.update().where(nodes.c.id == node_id).values(wg_public_key=wg_public_key)
                )
                if done.rowcount != 1:
                    raise KeyError(node_id)
                self._save_rotations(c, rotations)
                return _node(c.execute(sa.select(nodes).where(nodes.c.id == node_id)).one())
        except IntegrityError as e:
            raise StoreConflict(f"already in use: {_constraint(e)}") from None

    def touch(self, last_seen: Mapping[int, datetime]) -> None:
        if not last_seen:
            return
        with self._engine.begin() as c:
            c.execute(
                nodes.update()
                .where(nodes.c.id == sa.bindparam("node_id"))
                .values(last_seen=sa.bindparam("seen")),
                [{"node_id": n, "seen": t} for n, t in last_seen.items()],
            )

    def add_policy(
        self, text: str, author: str, action: str, restored: int | None, now: datetime
    ) -> PolicyRecord:
        p = policy_versions.c
        with self._engine.begin() as c:
            version = int(c.execute(sa.select(sa.func.coalesce(sa.func.max(p.version), 0))).scalar_one()) + 1
            values = {"version": version, "created_at": now, "author": author, "action": action}
            c.execute(policy_versions.insert().values(restored=restored, text=text, **values))
            return _policy(c.execute(sa.select(policy_versions).where(p.version == version)).one())

    def policy_history(self) -> list[PolicyRecord]:
        with self._engine.begin() as c:
            rows = c.execute(sa.select(policy_versions).order_by(policy_versions.c.version)).all()
        return [_policy(r) for r in rows]


def _policy(r: sa.Row[Any]) -> PolicyRecord:
    return PolicyRecord(r.version, r.created_at, r.author, r.action, r.restored, r.text)


def _engine(url: str) -> Engine:
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
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
    )


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


def _key(r: sa.Row[Any]) -> PreAuthKeyRecord:
    return PreAuthKeyRecord(
        id=r.id,
        role=r.role,
        reusable=bool(r.reusable),
        created_at=r.created_at,
        expires_at=r.expires_at,
        revoked=bool(r.revoked),
        used_count=r.used_count,
    )


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
