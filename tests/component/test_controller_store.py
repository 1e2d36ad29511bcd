"""The SQLite store on its own: the schema is versioned, a single-use key survives a race between two
processes' worth of connections, uniqueness holds in the database, and nothing half-happens."""

from __future__ import annotations

import ipaddress
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.credentials import credential_hash
from controller.ipam import AddressHold
from controller.mesh import MapState
from controller.sqlstore import SCHEMA_VERSION, SqlStore, StoreError
from controller.store import KeyRefused, NodeWrite, StoreConflict
from controller.topology import LinkRecord

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def node(i: int, address: str | None = None) -> NodeWrite:
    return NodeWrite(
        node_id=None,
        name=f"n{i}",
        hostname=f"n{i}",
        wg_public_key=f"wg{i:041d}==",
        identity_public_key=f"id{i:041d}==",
        tunnel_address=ipaddress.ip_address(address or f"10.0.0.{i}"),
        endpoints=(f"198.18.0.{i}:51820",),
        listen_port=51820,
        credential_hash=credential_hash(f"cred{i}"),
    )


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'c.db'}"


def test_a_new_database_gets_the_current_schema_and_wal(url: str, tmp_path: Path):
    store = SqlStore(url)
    assert store.schema_version() == SCHEMA_VERSION
    store.close()
    with sqlite3.connect(tmp_path / "c.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_database_from_a_newer_wgmesh_is_refused(url: str, tmp_path: Path):
    SqlStore(url).close()
    with sqlite3.connect(tmp_path / "c.db") as db:
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError, match="schema version 99, newer"):
        SqlStore(url)


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
        barrier.wait()
        try:
            stores[i].enroll(credential_hash("k"), node(i + 1), NOW)
            results.append("ok")
        except KeyRefused as e:
            results.append(str(e))

    threads = [threading.Thread(target=enroll, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
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
    assert store.remove_node(b.node_id, [AddressHold(b.tunnel_address, a.node_id, 4)])
    snap = store.load()
    assert [n.node_id for n in snap.nodes] == [a.node_id]
    assert snap.links == [] and set(snap.maps) == {a.node_id}
    assert snap.holds == [AddressHold(b.tunnel_address, a.node_id, 4)]
    store.release_holds(a.node_id, 4)
    assert store.load().holds == []
    c = store.enroll(credential_hash("k"), node(3), NOW)
    assert c.node_id > b.node_id
    assert not store.remove_node(b.node_id, [])


def test_timestamps_come_back_timezone_aware(url: str):
    store = SqlStore(url)
    key = store.create_preauth_key(credential_hash("k"), "node", False, NOW, NOW + timedelta(hours=1))
    assert key.created_at == NOW and key.expires_at is not None and key.expires_at.tzinfo is not None
    store.enroll(credential_hash("k"), node(1), NOW)
    store.touch({1: NOW + timedelta(minutes=5)})
    assert store.load().nodes[0].last_seen == NOW + timedelta(minutes=5)
