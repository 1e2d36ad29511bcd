"""The agent's state directory: 0700/0600 files, typed loaders, errors that name the file."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from ipaddress import ip_address, ip_network

import pytest

from agent.state import (
    AgentState,
    StateError,
    StatePaths,
    load_credential,
    load_keys,
    load_netmap,
    load_or_create_keys,
    save_credential,
    save_netmap,
)
from keys.types import IdentityPrivateKey, WireGuardPrivateKey
from tests.support import SAMPLE_NETMAP


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def sample_state(**overrides):
    fields = {
        "node_id": 3,
        "name": "web-1",
        "tunnel_address": ip_address("10.99.0.3"),
        "mesh_cidr": ip_network("10.99.0.0/16"),
        "controller_url": "http://198.18.0.1:8080",
        "interface": "wg0",
        "backend": "userspace",
        "listen_port": 51820,
        "enrolled_at": datetime(2026, 11, 24, tzinfo=UTC),
    }
    fields.update(overrides)
    return AgentState(**fields)


def test_first_start_creates_private_keys_0600_in_a_0700_dir(tmp_path):
    state_dir = tmp_path / "state"
    keys, created = load_or_create_keys(state_dir)
    paths = StatePaths(state_dir)
    assert created
    assert mode(state_dir) == 0o700
    assert mode(paths.wireguard_key) == 0o600
    assert mode(paths.identity_key) == 0o600
    assert isinstance(keys.wireguard, WireGuardPrivateKey)
    assert isinstance(keys.identity, IdentityPrivateKey)


def test_later_starts_reuse_the_same_keys(tmp_path):
    first, _ = load_or_create_keys(tmp_path)
    again, created = load_or_create_keys(tmp_path)
    assert not created
    assert again == first
    assert load_keys(tmp_path) == first


def test_a_key_file_others_can_read_is_refused(tmp_path):
    load_or_create_keys(tmp_path)
    StatePaths(tmp_path).wireguard_key.chmod(0o644)
    with pytest.raises(StateError, match="other users can read it"):
        load_keys(tmp_path)


def test_node_state_round_trips_and_holds_no_secret(tmp_path):
    keys, _ = load_or_create_keys(tmp_path)
    state = sample_state()
    state.save(tmp_path)
    assert AgentState.load(tmp_path) == state
    text = StatePaths(tmp_path).node.read_text()
    assert keys.wireguard.base64() not in text
    assert keys.identity.base64() not in text
    assert mode(StatePaths(tmp_path).node) == 0o600


def test_missing_node_state_says_not_enrolled(tmp_path):
    with pytest.raises(StateError, match="has not enrolled yet"):
        AgentState.load(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "not JSON"), ('{"node_id": 0}', "node_id"), ("[]", "not a valid node state")],
)
def test_corrupt_node_state_names_the_file(tmp_path, content, message):
    StatePaths(tmp_path).node.write_text(content)
    with pytest.raises(StateError, match=message) as info:
        AgentState.load(tmp_path)
    assert "node.json" in str(info.value)


def test_credential_is_0600_and_refused_when_readable(tmp_path):
    save_credential(tmp_path, "wgm_node_secret")
    assert mode(StatePaths(tmp_path).credential) == 0o600
    assert load_credential(tmp_path) == "wgm_node_secret"
    StatePaths(tmp_path).credential.chmod(0o640)
    with pytest.raises(StateError, match="other users can read it"):
        load_credential(tmp_path)


def test_netmap_cache_round_trips(tmp_path):
    assert load_netmap(tmp_path) is None
    netmap = SAMPLE_NETMAP
    save_netmap(tmp_path, netmap)
    assert load_netmap(tmp_path) == netmap
    StatePaths(tmp_path).netmap.write_text("garbage")
    with pytest.raises(StateError, match=r"netmap\.json: not a valid network map"):
        load_netmap(tmp_path)
