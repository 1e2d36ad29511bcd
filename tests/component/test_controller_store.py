"""The store on its own, on SQLite and on PostgreSQL: the schema is migrated by Alembic (a database of
the pre-Alembic schema upgrades in place, a newer one is refused), a single-use key survives a race
between several stores, uniqueness holds in the database, nothing half-happens, and every change
bumps the mesh version with a log another replica catches up from."""

from __future__ import annotations

import dataclasses
import ipaddress
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from controller.credentials import credential_hash
from controller.ipam import AddressHold
from controller.mesh import MapState
from controller.sqlstore import SCHEMA_VERSION, SqlStore, StoreError, _alembic_config, engine_url, metadata
from controller.store import KeyRefused, NodeRemoved, NodeWrite, StaleVersion, StoreConflict
from controller.topology import MAX_HANDSHAKE_AGE_S, LinkRecord, Sample, SampleRecord
from lab.postgres import PostgresCluster, free_port

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LEGACY_DUMP = Path(__file__).parent / "data" / "controller-schema-1.sql"


def node(i: int, address: str | None = None) -> NodeWrite:
    return NodeWrite(
        node_id=None,
        name=f"n{i}",
        hostname=f"n{i}",
        wg_public_key=f"wg{i:040d}==",
        identity_public_key=f"id{i:040d}==",
        tunnel_address=ipaddress.ip_address(address or f"10.0.0.{i}"),
        endpoints=(f"198.18.0.{i}:51820",),
        listen_port=51820,
        credential_hash=credential_hash(f"cred{i}"),
    )


@pytest.fixture
def url(store_url: str) -> str:
    return store_url


def execute(url: str, sql: str) -> None:
    with sa.create_engine(engine_url(url)).begin() as c:
        c.execute(sa.text(sql))


def test_a_new_database_gets_the_current_schema_and_wal(tmp_path: Path):
    store = SqlStore(f"sqlite:///{tmp_path / 'c.db'}")
    assert store.schema_version() == SCHEMA_VERSION
    assert store.schema_revision() == head_revision()
    store.close()
    with sqlite3.connect(tmp_path / "c.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_migrations_are_one_chain_that_builds_exactly_the_schema_the_code_uses(url: str):
    script = ScriptDirectory.from_config(_alembic_config())
    assert len(script.get_heads()) == 1, f"several heads: {script.get_heads()}; chain the new revision"
    store = SqlStore(url)
    with sa.create_engine(engine_url(url)).connect() as c:
        diff = compare_metadata(MigrationContext.configure(c), metadata)
    store.close()
    assert diff == []


def test_a_database_made_before_alembic_upgrades_in_place_and_keeps_everything(tmp_path: Path):
    path = tmp_path / "c.db"
    with sqlite3.connect(path) as db:
        db.executescript(LEGACY_DUMP.read_text())
    store = SqlStore(f"sqlite:///{path}")
    assert store.schema_revision() == head_revision() and store.schema_version() == SCHEMA_VERSION
    snap = store.load()
    assert [(n.node_id, n.name, str(n.tunnel_address)) for n in snap.nodes] == [
        (1, "n1", "100.64.0.1"),
        (2, "n2", "100.64.0.2"),
        (3, "n3", "100.64.0.3"),
    ]
    assert snap.nodes[0].last_seen == NOW
    assert snap.maps[2] == MapState(9, "b" * 64)
    assert sorted(snap.links, key=lambda r: r.a) == [
        LinkRecord(1, 2, 12.5, None),
        LinkRecord(2, 3, None, NOW),
    ]
    assert snap.holds == [AddressHold(ipaddress.ip_address("100.64.0.4"), 1, 8)]
    # Serials keep growing: the mesh version starts at the highest stored serial.
    assert snap.version == 9
    with pytest.raises(KeyRefused, match="already used"):
        store.enroll(credential_hash("single-key"), node(5), NOW)
    fresh = store.enroll(credential_hash("reusable-key"), node(6), NOW)
    assert fresh.node_id == 5  # id 4 was removed and is never handed out again
    store.close()
    SqlStore(f"sqlite:///{path}").close()  # opening again migrates nothing


def test_a_database_from_a_newer_wgmesh_is_refused(url: str):
    SqlStore(url).close()
    execute(url, "UPDATE alembic_version SET version_num = '0999_future'")
    with pytest.raises(StoreError, match="schema revision 0999_future, newer than this wgmesh") as e:
        SqlStore(url)
    assert "upgrade wgmesh" in str(e.value)


def test_a_pre_alembic_database_of_a_newer_version_is_refused(tmp_path: Path):
    path = tmp_path / "c.db"
    with sqlite3.connect(path) as db:
        db.executescript(LEGACY_DUMP.read_text())
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError, match="schema version 99, newer"):
        SqlStore(f"sqlite:///{path}")


def test_postgres_url_problems_are_one_line_without_the_password(postgres: PostgresCluster):
    wrong = postgres.url("postgres", password="not-the-Secret-1")
    with pytest.raises(StoreError) as e:
        SqlStore(wrong)
    assert "password authentication failed" in str(e.value) and "not-the-Secret-1" not in str(e.value)
    missing = postgres.url("no_such_db")
    with pytest.raises(StoreError, match='database "no_such_db" does not exist') as e:
        SqlStore(missing)
    assert postgres.password not in str(e.value)
    unreachable = postgres.url("postgres").replace(f":{postgres.port}/", f":{free_port()}/")
    with pytest.raises(StoreError, match=r"refused|failed") as e:
        SqlStore(unreachable)
    assert postgres.password not in str(e.value) and "\n" not in str(e.value)


def test_every_change_bumps_the_version_and_another_store_catches_up(url: str):
    a, b = SqlStore(url), SqlStore(url)
    a.create_preauth_key(credential_hash("k"), "node", True, NOW, None)
    assert b.version() == 0  # keys are not part of the mesh
    n1 = a.enroll(credential_hash("k"), node(1), NOW, at_version=0)
    n2 = a.enroll(credential_hash("k"), node(2), NOW, at_version=1)
    assert a.save_links([LinkRecord(n1.node_id, n2.node_id, 3.0, None)]) == 3
    batch = b.changes_since(0)
    assert batch is not None and (batch.since, batch.version) == (0, 3)
    assert [n.name for n in batch.nodes] == ["n1", "n2"] and batch.removed == []
    assert batch.links == [LinkRecord(n1.node_id, n2.node_id, 3.0, None)]
    assert a.remove_node(n2.node_id, [AddressHold(n2.tunnel_address, n1.node_id, 4)], NOW, at_version=3)
    batch = b.changes_since(3)
    assert batch is not None and batch.version == 4 and batch.removed == [n2.node_id] and batch.nodes == []
    assert batch.holds == [AddressHold(n2.tunnel_address, n1.node_id, 4)]
    assert b.changes_since(4) == type(batch)(4, 4, [], [], [], [])
    a.close()
    b.close()


def test_shared_link_samples_reach_another_store_and_a_written_link_keeps_only_its_writers(url: str):
    a, b = SqlStore(url), SqlStore(url)
    a.create_preauth_key(credential_hash("k"), "node", True, NOW, None)
    n1, n2 = (a.enroll(credential_hash("k"), node(i), NOW) for i in (1, 2))
    lo, hi = n1.node_id, n2.node_id
    slow = SampleRecord(lo, hi, lo, Sample(80.0, 0.0, 2.0, NOW, 80.0))
    healed = SampleRecord(lo, hi, lo, Sample(1.0, 0.0, 2.0, NOW + timedelta(seconds=2), 40.5))
    assert a.save_links([LinkRecord(lo, hi, 80.0, None)], [slow]) == 3
    assert a.save_links([], [healed]) == 4  # a sample alone is a change too
    batch = b.changes_since(3)
    assert batch is not None and batch.links == [LinkRecord(lo, hi, 80.0, None)] and batch.samples == [healed]
    other = SampleRecord(lo, hi, hi, Sample(None, None, float("inf"), NOW, None, True))
    assert a.save_links([LinkRecord(lo, hi, 1.0, None)], [other]) == 5
    (kept,) = b.load().samples  # the end's older sample went with the record that did not carry it
    assert kept.end == hi and kept.sample.far_below and kept.sample.handshake_age_s == MAX_HANDSHAKE_AGE_S
    a.remove_node(hi, [], NOW)
    assert b.load().samples == []
    a.close()
    b.close()


def test_a_write_from_a_stale_view_changes_nothing(url: str):
    a, b = SqlStore(url), SqlStore(url)
    a.create_preauth_key(credential_hash("k"), "node", False, NOW, None)
    b.create_preauth_key(credential_hash("r"), "node", True, NOW, None)
    b.enroll(credential_hash("r"), node(1), NOW, at_version=0)
    with pytest.raises(StaleVersion):
        a.enroll(credential_hash("k"), node(2), NOW, at_version=0)
    assert a.list_preauth_keys()[0].used_count == 0 and len(a.load().nodes) == 1
    with pytest.raises(StaleVersion):
        a.remove_node(1, [], NOW, at_version=0)
    assert a.version() == 1 and len(a.load().nodes) == 1
    a.close()
    b.close()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def test_an_unopenable_database_is_one_clear_error(tmp_path: Path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="database"):
        SqlStore(f"sqlite:///{tmp_path / 'file' / 'c.db'}")


def test_two_stores_racing_for_one_single_use_key_let_exactly_one_through(url: str):
    stores = [SqlStore(url) for _ in range(4)]
    stores[0].create_preauth_key(credential_hash("k"), "node", False, NOW, None)
    results: list[str] = []
    barrier = threading.Barrier(len(stores))

    def enroll(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            stores[i].enroll(credential_hash("k"), node(i + 1), NOW)
            results.append("ok")
        except KeyRefused as e:
            results.append(str(e))

    threads = [threading.Thread(target=enroll, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "an enrollment did not finish within 30 s"
    assert sorted(results) == ["ok"] + ["single-use pre-auth key 1 was already used"] * 3
    assert len(stores[0].load().nodes) == 1
    assert stores[0].list_preauth_keys()[0].used_count == 1
    for s in stores:
        s.close()


def test_an_address_or_key_in_use_is_a_conflict_and_consumes_nothing(url: str):
    store = SqlStore(url)
    store.create_preauth_key(credential_hash("k"), "node", True, NOW, None)
    store.enroll(credential_hash("k"), node(1), NOW)
    with pytest.raises(StoreConflict, match="tunnel address"):
        store.enroll(credential_hash("k"), node(2, address="10.0.0.1"), NOW)
    assert store.list_preauth_keys()[0].used_count == 1
    assert [n.name for n in store.load().nodes] == ["n1"]


def test_expiry_is_checked_against_the_given_time(url: str):
    store = SqlStore(url)
    store.create_preauth_key(credential_hash("k"), "node", True, NOW, NOW + timedelta(seconds=10))
    store.enroll(credential_hash("k"), node(1), NOW + timedelta(seconds=9))
    with pytest.raises(KeyRefused, match="expired at"):
        store.enroll(credential_hash("k"), node(2), NOW + timedelta(seconds=10))


def test_removing_a_node_takes_its_state_and_ids_are_never_reused(url: str):
    store = SqlStore(url)
    store.create_preauth_key(credential_hash("k"), "node", True, NOW, None)
    a = store.enroll(credential_hash("k"), node(1), NOW)
    b = store.enroll(credential_hash("k"), node(2), NOW)
    store.save_maps({a.node_id: MapState(3, "aa"), b.node_id: MapState(5, "bb")})
    store.save_links([LinkRecord(a.node_id, b.node_id, 12.5, NOW)])
    assert store.remove_node(b.node_id, [AddressHold(b.tunnel_address, a.node_id, 4)], NOW)
    snap = store.load()
    assert [n.node_id for n in snap.nodes] == [a.node_id]
    assert snap.links == [] and set(snap.maps) == {a.node_id}
    assert snap.holds == [AddressHold(b.tunnel_address, a.node_id, 4)]
    store.release_holds({a.node_id: 4})
    assert store.load().holds == []
    c = store.enroll(credential_hash("k"), node(3), NOW)
    assert c.node_id > b.node_id
    assert not store.remove_node(b.node_id, [], NOW)


def test_a_removed_nodes_keys_are_refused_until_allowed_and_its_credential_is_known(url: str):
    store = SqlStore(url)
    store.create_preauth_key(credential_hash("k"), "node", True, NOW, None)
    b = store.enroll(credential_hash("k"), node(2), NOW)
    assert store.remove_node(b.node_id, [], NOW)
    with pytest.raises(NodeRemoved, match=f"wgmesh nodes allow {b.node_id}"):
        store.enroll(credential_hash("k"), node(2), NOW)
    other_wg = dataclasses.replace(node(2), identity_public_key=f"id{9:040d}==")
    with pytest.raises(NodeRemoved):
        store.enroll(credential_hash("k"), other_wg, NOW)
    with pytest.raises(KeyRefused, match="unknown pre-auth key"):
        store.enroll(credential_hash("nope"), node(2), NOW)  # the key first: nothing said of removals
    assert store.list_preauth_keys()[0].used_count == 1  # refusals used nothing up
    gone = store.removed_by_credential(credential_hash("cred2"))
    assert gone is not None and (gone.node_id, gone.name, gone.removed_at) == (b.node_id, "n2", NOW)
    assert [r.node_id for r in SqlStore(url).removed_nodes()] == [b.node_id]  # kept in the database
    assert store.allow_removed(b.node_id) == gone and store.allow_removed(b.node_id) is None
    assert store.removed_by_credential(credential_hash("cred2")) is None
    assert store.enroll(credential_hash("k"), node(2), NOW).node_id > b.node_id


def test_timestamps_come_back_timezone_aware(url: str):
    store = SqlStore(url)
    key = store.create_preauth_key(credential_hash("k"), "node", False, NOW, NOW + timedelta(hours=1))
    assert key.created_at == NOW and key.expires_at is not None and key.expires_at.tzinfo is not None
    store.enroll(credential_hash("k"), node(1), NOW)
    store.touch({1: NOW + timedelta(minutes=5)})
    assert store.load().nodes[0].last_seen == NOW + timedelta(minutes=5)
