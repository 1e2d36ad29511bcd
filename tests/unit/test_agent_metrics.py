"""The agent's Prometheus metrics: peers' handshakes, bytes, RTT and route from the last status and the
live device, as a scrape of the listener returns them; a listener per agent, each with its own registry."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.device import Device
from agent.metrics import MetricsListener, agent_registry
from agent.settings import AgentError
from tests.support import PEER_KEY_B, PEER_KEY_C, STATUS_NOW, sample_device, sample_status


def scrape(address: tuple[str, int]) -> dict[str, list[tuple[dict[str, str], float]]]:
    r = httpx.get(f"http://{address[0]}:{address[1]}/metrics", timeout=10)
    assert r.status_code == 200
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def by_name(samples: list[tuple[dict[str, str], float]]) -> dict[str, float]:
    return {labels["name"]: v for labels, v in samples}


@pytest.fixture
def listener():
    live = sample_device(rx_bytes=5000, tx_bytes=6000)
    started = MetricsListener("127.0.0.1", 0, agent_registry(lambda: sample_status(), lambda: live))
    try:
        yield started
    finally:
        started.close()


def test_a_scrape_shows_every_peer_with_live_counters_and_its_route(listener: MetricsListener):
    got = scrape(listener.address)
    assert by_name(got["wgmesh_peer_last_handshake_seconds"]) == {"beta": STATUS_NOW - 1, "gamma": 0.0}
    assert by_name(got["wgmesh_peer_receive_bytes_total"]) == {"beta": 5000, "gamma": 0}
    assert by_name(got["wgmesh_peer_transmit_bytes_total"]) == {"beta": 6000, "gamma": 0}
    assert by_name(got["wgmesh_peer_rtt_seconds"]) == {"beta": pytest.approx(0.00042)}
    info = {labels["name"]: labels for labels, _ in got["wgmesh_peer_info"]}
    assert info["beta"] == {
        "public_key": PEER_KEY_B.base64(),
        "name": "beta",
        "endpoint": "198.18.0.9:51820",
        "route": "direct",
    }
    assert info["gamma"]["route"] == "via beta" and info["gamma"]["public_key"] == PEER_KEY_C.base64()
    assert got["wgmesh_agent_controller_connected"] == [({}, 1.0)]
    assert got["wgmesh_agent_map_serial"] == [({}, 7.0)]


def test_without_a_status_yet_the_scrape_is_empty_not_an_error():
    started = MetricsListener("127.0.0.1", 0, agent_registry(lambda: None, lambda: None))
    try:
        got = scrape(started.address)
        assert "wgmesh_peer_info" not in got and "wgmesh_agent_map_serial" not in got
    finally:
        started.close()


def test_a_device_that_cannot_be_read_leaves_the_status_values(listener: MetricsListener):
    def broken() -> Device:
        raise OSError("no such device")

    started = MetricsListener("127.0.0.1", 0, agent_registry(lambda: sample_status(), broken))
    try:
        got = scrape(started.address)
        assert by_name(got["wgmesh_peer_receive_bytes_total"]) == {"beta": 1536, "gamma": 0}
    finally:
        started.close()


def test_an_address_in_use_is_one_line(listener: MetricsListener):
    host, port = listener.address
    with pytest.raises(
        AgentError, match=rf"^cannot listen for metrics on 127.0.0.1:{port}: Address already in use$"
    ):
        MetricsListener(host, port, agent_registry(lambda: None, lambda: None))
