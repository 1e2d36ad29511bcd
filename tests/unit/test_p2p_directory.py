"""The peer directory file: format, loader errors (one line each), atomic writes, following changes,
and the directory an agent builds from its network map."""

from __future__ import annotations

import json
import os
from ipaddress import IPv4Address, IPv4Network, IPv6Address

import pytest

from keys.types import IdentityPrivateKey, WireGuardPrivateKey
from p2p.core.directory import DEFAULT_PORT, Directory, DirectoryEntry
from p2p.directory import (
    DirectoryError,
    DirectoryFile,
    directory_from_netmap,
    load_directory,
    parse_directory,
    write_directory,
)
from wire.models import NetMap, Peer, SelfNode

KEYS = [IdentityPrivateKey.generate() for _ in range(3)]


def entry(i: int, **kw) -> DirectoryEntry:
    fields = {"node_id": i, "name": f"n{i}", "address": IPv4Address(f"10.80.0.{i}"), "role": "node"}
    fields.update(kw)
    return DirectoryEntry(identity_public_key=KEYS[i - 1].public_key(), **fields)


def sample() -> Directory:
    return Directory.of(
        entry(1), [entry(2, port=9000, role="supervisor"), entry(3, address=IPv6Address("fd00::3"))], serial=4
    )


def doc(**changes) -> dict:
    d = json.loads(__import__("p2p.directory", fromlist=["directory_json"]).directory_json(sample()))
    d.update(changes)
    return d


def test_written_file_loads_back_equal(tmp_path):
    path = tmp_path / "state" / "p2p-directory.json"
    write_directory(path, sample())
    loaded = load_directory(path)
    assert loaded == sample()
    assert loaded.get(2).port == 9000 and loaded.get(3).port == DEFAULT_PORT
    assert loaded.get(3).url() == f"ws://[fd00::3]:{DEFAULT_PORT}/"
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in path.parent.iterdir()] == ["p2p-directory.json"]  # no temp file left


def test_port_is_optional_and_defaults_to_8421():
    d = doc()
    del d["peers"][0]["port"]
    assert parse_directory(json.dumps(d)).get(2).port == 8421


@pytest.mark.parametrize(
    "change, message",
    [
        ({"format": "other"}, "format"),
        ({"version": 2}, "version"),
        ({"extra": 1}, "extra"),
        ({"self": None}, "self"),
    ],
)
def test_bad_documents_get_one_line_naming_the_field(change, message):
    with pytest.raises(DirectoryError) as e:
        parse_directory(json.dumps(doc(**change)), "dir.json")
    assert str(e.value).startswith("dir.json: ") and message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("identity_public_key", "short", "identity public key"),
        ("address", "10.0.0.300", "address"),
        ("port", 0, "port"),
        ("role", "Bad Role", "role"),
        ("node_id", 0, "node_id"),
    ],
)
def test_bad_peer_fields_are_named(field, value, message):
    d = doc()
    d["peers"][1][field] = value
    with pytest.raises(DirectoryError, match=rf"dir.json: peers\.1\.{field}: .*"):
        parse_directory(json.dumps(d), "dir.json")


def test_a_node_listed_twice_is_refused():
    d = doc()
    d["peers"].append(d["peers"][0])
    with pytest.raises(DirectoryError, match="node 2 appears twice"):
        parse_directory(json.dumps(d))
    d = doc()
    d["peers"].append(d["self"])
    with pytest.raises(DirectoryError, match="both this node and a peer"):
        parse_directory(json.dumps(d))


def test_missing_file_and_not_json_are_one_line_errors(tmp_path):
    with pytest.raises(DirectoryError, match="no such file"):
        load_directory(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DirectoryError, match=r"bad\.json: document: Invalid JSON"):
        load_directory(tmp_path / "bad.json")


def test_following_the_file_sees_each_change_once_and_keeps_the_last_good_one(tmp_path):
    path = tmp_path / "d.json"
    write_directory(path, sample())
    follower = DirectoryFile(path)
    assert follower.load() == sample()
    assert follower.changed() is None
    smaller = Directory.of(entry(1), [entry(2)], serial=5)
    write_directory(path, smaller)
    assert follower.changed() == smaller
    assert follower.changed() is None
    path.write_text("{broken")
    os.utime(path, ns=(1, 1))
    assert follower.changed() is None and "d.json" in follower.last_error
    write_directory(path, sample())
    assert follower.changed() == sample() and follower.last_error is None


def test_agent_builds_the_directory_from_its_network_map():
    netmap = NetMap(
        serial=9,
        node=SelfNode(
            node_id=1,
            name="a",
            role="supervisor",
            tunnel_address=IPv4Address("10.80.0.1"),
            mesh_cidr=IPv4Network("10.80.0.0/24"),
            listen_port=51820,
        ),
        peers=[
            Peer(
                node_id=2,
                name="b",
                role="worker",
                wg_public_key=WireGuardPrivateKey.generate().public_key(),
                identity_public_key=KEYS[1].public_key(),
                tunnel_address=IPv4Address("10.80.0.2"),
                allowed_ips=[IPv4Network("10.80.0.2/32")],
            )
        ],
        routes=[],
        forward=False,
    )
    d = directory_from_netmap(netmap, KEYS[0].public_key())
    assert d.serial == 9 and d.own.role == "supervisor" and d.own.identity_public_key == KEYS[0].public_key()
    assert d.get(2) == DirectoryEntry(
        2, "b", IPv4Address("10.80.0.2"), "worker", KEYS[1].public_key(), DEFAULT_PORT
    )
