"""status.json and the `wgmesh agent status` table: what an operator reads."""

from __future__ import annotations

import pytest

from agent.status import (
    AgentStatus,
    StatusError,
    format_age,
    format_bytes,
    render_table,
    with_live_device,
)
from tests.support import STATUS_NOW, sample_device, sample_status


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "never"),
        (0, "0s ago"),
        (12.7, "12s ago"),
        (184, "3m 4s ago"),
        (7500, "2h 5m ago"),
        (273600, "3d 4h ago"),
    ],
)
def test_handshake_age_reads_like_wg(seconds, text):
    assert format_age(seconds) == text


@pytest.mark.parametrize(
    ("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1536, "1.50 KiB"), (3 * 2**20, "3.00 MiB")]
)
def test_transfer_in_binary_units(n, text):
    assert format_bytes(n) == text


def test_table_shows_every_column_and_the_controller_state():
    lines = render_table(sample_status(), STATUS_NOW).splitlines()
    assert lines[0] == (
        "node alpha (id 1) 10.99.0.1 on wg0; controller http://198.18.0.1:8080: connected since 2m 5s; map serial 7"
    )
    assert lines[2].split() == [
        "NAME",
        "TUNNEL",
        "ADDRESS",
        "ENDPOINT",
        "HANDSHAKE",
        "TRANSFER",
        "(rx",
        "/",
        "tx)",
        "RTT",
        "ROUTE",
    ]
    beta, gamma = lines[3], lines[4]
    assert beta.split() == [
        "beta",
        "10.99.0.2",
        "198.18.0.3:51820",
        "12s",
        "ago",
        "1.50",
        "KiB",
        "/",
        "300",
        "B",
        "0.4",
        "ms",
        "direct",
    ]
    assert gamma.split() == ["gamma", "10.99.0.3", "-", "never", "0", "B", "/", "0", "B", "-", "via", "beta"]
    # columns line up: every row starts its ENDPOINT column at the same offset
    assert lines[2].index("ENDPOINT") == beta.index("198.18.0.3") == gamma.index("-")


def test_table_says_when_the_map_comes_from_cache_and_the_controller_is_away():
    text = render_table(
        sample_status(controller="disconnected", netmap_source="cache", controller_since=STATUS_NOW - 5),
        STATUS_NOW,
    )
    assert "disconnected since 5s; map serial 7 (from cache)" in text.splitlines()[0]


def test_table_without_peers():
    assert render_table(sample_status(peers=[]), STATUS_NOW).splitlines()[-1] == "no peers"


def test_live_device_counters_replace_the_file_ones():
    device = sample_device(rx_bytes=5, tx_bytes=6)
    live = with_live_device(sample_status(), device)
    beta = live.peer("beta")
    assert beta is not None
    assert (beta.endpoint, beta.latest_handshake, beta.rx_bytes, beta.tx_bytes) == (
        "198.18.0.9:51820",
        STATUS_NOW - 1,
        5,
        6,
    )
    assert live.peer("gamma") == sample_status().peer("gamma")


def test_status_file_round_trips_and_ignores_updated_at_for_change(tmp_path):
    path = tmp_path / "status.json"
    s = sample_status()
    s.save(path)
    assert AgentStatus.load(path) == s
    assert s.same_as(s.model_copy(update={"updated_at": STATUS_NOW + 60}))
    assert not s.same_as(s.model_copy(update={"serial": 8}))


def test_missing_or_bad_status_file_is_one_clear_error(tmp_path):
    with pytest.raises(StatusError, match="has not run"):
        AgentStatus.load(tmp_path / "status.json")
    (tmp_path / "status.json").write_text("{}")
    with pytest.raises(StatusError, match="not a valid status file"):
        AgentStatus.load(tmp_path / "status.json")
