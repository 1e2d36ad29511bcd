"""The lab's pure parts: names and addresses, the UAPI reply parser, pair states and the tables a
person reads. (The namespaces themselves are exercised in tests/e2e.)"""

from __future__ import annotations

from datetime import UTC, datetime
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from agent.uapi import UapiError
from keys.types import WireGuardPrivateKey
from lab import render
from lab.layout import IFNAME_MAX, MAX_HOSTS, LabLayout, LayoutError, host_index
from lab.observe import HostView, PingResult, mesh_view
from lab.record import HostRecord, LabRecord, ProcessRecord, load, save
from lab.wgstate import WgDeviceView, WgPeerView, parse_uapi_get
from wire.models import Topology


def test_layout_names_and_addresses():
    layout = LabLayout("lab")
    h7 = layout.host(7)
    assert layout.underlay_namespace == "wgl-lab-u"
    assert h7.namespace == "wgl-lab-h7"
    assert h7.underlay_address == IPv4Address("198.18.1.7")
    assert h7.endpoint == "198.18.1.7:51820"
    assert h7.state_dir == Path("/run/wgmesh-lab/lab/hosts/h7/state")
    assert layout.controller_url == "https://198.18.0.1:8420"
    last = layout.host(MAX_HOSTS)
    assert last.underlay_address == IPv4Address("198.18.1.250")
    assert len(last.bridge_port_ifname) <= IFNAME_MAX


@pytest.mark.parametrize("bad", ["", "Lab", "9lab", "lab-1", "abcdefghi", "la b"])
def test_bad_lab_names_are_refused(bad):
    with pytest.raises(LayoutError, match="lab name"):
        LabLayout(bad)


@pytest.mark.parametrize("bad", ["h0", "h", "host1", "h01", f"h{MAX_HOSTS + 1}", "H1"])
def test_bad_host_names_are_refused(bad):
    with pytest.raises(LayoutError, match=r"h1 \.\. h"):
        host_index(bad)


def test_record_round_trips_and_is_private(tmp_path):
    layout = LabLayout("t", root=tmp_path)
    rec = LabRecord(
        name="t", hosts=[HostRecord(index=1, agent=ProcessRecord(pid=5, start_ticks=9, argv=["x"], log="l"))]
    )
    save(layout, rec)
    assert load(layout) == rec
    assert layout.record_path.stat().st_mode & 0o777 == 0o600
    assert rec.next_index() == 2


def _keys(n):
    privs = [WireGuardPrivateKey.generate() for _ in range(n)]
    return privs, [p.public_key() for p in privs]


def test_parse_uapi_get_reads_keys_handshakes_and_counters():
    (priv, _), (pub, peer_pub) = _keys(2)
    text = (
        f"private_key={priv.hex()}\nlisten_port=51820\n"
        f"public_key={peer_pub.hex()}\nendpoint=198.18.1.2:51820\nlast_handshake_time_sec=1700000000\n"
        "last_handshake_time_nsec=500000000\ntx_bytes=10\nrx_bytes=20\npersistent_keepalive_interval=0\n"
        "allowed_ip=198.19.0.2/32\nallowed_ip=198.19.0.3/32\nerrno=0\n\n"
    )
    dev = parse_uapi_get(text)
    assert dev.public_key == pub and dev.listen_port == 51820
    peer = dev.peers[peer_pub]
    assert peer.endpoint == "198.18.1.2:51820"
    assert peer.allowed_ips == ("198.19.0.2/32", "198.19.0.3/32")
    assert peer.last_handshake == 1700000000.5
    assert (peer.rx_bytes, peer.tx_bytes) == (20, 10)


def test_parse_uapi_get_never_handshaken_and_errors():
    _, (peer_pub,) = _keys(1)
    dev = parse_uapi_get(f"public_key={peer_pub.hex()}\nlast_handshake_time_sec=0\nerrno=0\n")
    assert dev.public_key is None and dev.peers[peer_pub].last_handshake is None
    with pytest.raises(UapiError, match="errno 5"):
        parse_uapi_get("errno=-5\n")
    with pytest.raises(UapiError, match="no errno"):
        parse_uapi_get("listen_port=1\n")
    with pytest.raises(UapiError, match="public key"):
        parse_uapi_get("public_key=zz\nerrno=0\n")


def _host(name, pub, peers):
    views = {k: WgPeerView(k, None, (), hs, 0, 0) for k, hs in peers.items()}
    return HostView(name, IPv4Address("198.19.0.1"), WgDeviceView(pub, 51820, views))


def test_mesh_view_counts_a_pair_once_either_side_has_a_handshake():
    _, (a, b, c) = _keys(3)
    hosts = [
        _host("h1", a, {b: 100.0, c: None}),
        _host("h2", b, {a: None}),  # read a moment earlier: its side has not seen the handshake yet
        _host("h3", c, {}),  # does not know h1 yet
    ]
    view = mesh_view(hosts)
    assert view.pair("h1", "h2").handshake == 100.0
    p13 = view.pair("h1", "h3")
    assert (p13.a_has_b, p13.b_has_a, p13.handshake) == (True, False, None)
    assert not view.complete
    assert [(p.a, p.b) for p in view.missing()] == [("h1", "h3"), ("h2", "h3")]
    assert view.count("handshakes") == 1 and view.count("configured") == 1
    line, key = render.mesh_progress(view, 3.2)
    assert "handshakes 1/3 pairs" in line and line.startswith("[  3.2s]") and "3.2" not in key
    assert "h1 - h3" in render.missing_pairs(view)


def test_a_host_without_wireguard_keeps_the_mesh_incomplete():
    view = mesh_view([HostView("h1", None, None)])
    assert view.pairs == () and not view.complete


def test_ping_matrix_shows_every_pair_and_failures():
    text = render.ping_matrix(["h1", "h2"], [PingResult("h1", "h2", 0.5), PingResult("h2", "h1", None)])
    lines = text.splitlines()
    assert lines[0].split() == ["from\\to", "h1", "h2"]
    assert lines[1].split() == ["h1", "·", "0.50ms"]
    assert lines[2].split() == ["h2", "FAIL", "·"]


def test_topology_shows_nodes_links_and_relayed_routes():
    _, (k1, k2, k3) = _keys(3)
    now = datetime.now(UTC).isoformat()

    def node(i, k):
        return {
            "node_id": i, "name": f"h{i}", "role": "node", "wg_public_key": k.base64(),
            "identity_public_key": k.base64(), "tunnel_address": f"198.19.0.{i}",
            "endpoints": [f"198.18.1.{i}:51820"], "listen_port": 51820, "enrolled_at": now, "serial": 1,
        }  # fmt: skip

    topo = Topology.model_validate(
        {
            "nodes": [node(1, k1), node(2, k2), node(3, k3)],
            "edges": [{"a": 1, "b": 3, "weight": 1.0, "rtt_ms": 0.4, "loss": 0.0}],
            "routes": {
                "1": [
                    {"destination": 2, "destination_address": "198.19.0.2", "via": 3, "cost": 2.0},
                    {"destination": 3, "destination_address": "198.19.0.3", "via": 3, "cost": 1.0},
                ]
            },
        }
    )
    text = render.topology(topo)
    assert "h1 - h3" in text and "0.40ms" in text
    assert any("h1 -> h2" in line and "via h3 (relay)" in line for line in text.splitlines())
    assert any("h1 -> h3" in line and "direct" in line for line in text.splitlines())
