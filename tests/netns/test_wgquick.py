"""wg-quick export: the text, the 0600 atomic file, and the real wireguard-tools accepting it
(`wg-quick strip`, then `wg setconf` on a real wireguard-go device reads back the same device)."""

from __future__ import annotations

import os
import stat
from ipaddress import ip_interface, ip_network
from pathlib import Path

import pytest

from agent.device import DeviceConfig, PeerConfig
from agent.reconcile import diff
from agent.wgquick import HEADER, export_wgquick, render_wgquick, wgquick_path
from keys.types import PresharedKey, WireGuardPrivateKey
from tests.netns.harness import WG_IF, Namespaces, run

KEY = WireGuardPrivateKey(bytes([0x10] + [0x11] * 30 + [0x51]))  # clamped, as wireguard-go stores it
PEER_1 = WireGuardPrivateKey(b"\x22" * 32).public_key()
PEER_2 = WireGuardPrivateKey(b"\x33" * 32).public_key()
PSK = PresharedKey(b"\x44" * 32)


def device() -> DeviceConfig:
    return DeviceConfig.build(
        KEY,
        [
            PeerConfig(
                PEER_1,
                (ip_network("198.19.1.2/32"), ip_network("10.8.0.0/16")),
                endpoint="198.18.1.2:51820",
                persistent_keepalive=25,
                preshared_key=PSK,
            ),
            PeerConfig(PEER_2, (ip_network("198.19.1.3/32"),), endpoint="[2001:db8::3]:51820"),
        ],
        listen_port=51820,
        fwmark=0x51,
    )


def expected_text() -> str:
    first, second = sorted([PEER_1, PEER_2], key=lambda k: k.base64())
    sections = {
        PEER_1: (
            "# node one\n[Peer]\n"
            f"PublicKey = {PEER_1.base64()}\n"
            f"PresharedKey = {PSK.base64()}\n"
            "AllowedIPs = 10.8.0.0/16, 198.19.1.2/32\n"
            "Endpoint = 198.18.1.2:51820\n"
            "PersistentKeepalive = 25\n"
        ),
        PEER_2: (
            "[Peer]\n"
            f"PublicKey = {PEER_2.base64()}\n"
            "AllowedIPs = 198.19.1.3/32\n"
            "Endpoint = [2001:db8::3]:51820\n"
        ),
    }
    return (
        f"{HEADER}\n[Interface]\n"
        f"PrivateKey = {KEY.base64()}\n"
        "ListenPort = 51820\n"
        "FwMark = 0x51\n"
        "Address = 198.19.1.1/24, fd19::1/64\n"
        "DNS = 198.19.0.53, mesh.internal\n"
        "MTU = 1420\n"
        f"\n{sections[first]}\n{sections[second]}"
    )


def render() -> str:
    return render_wgquick(
        device(),
        [ip_interface("fd19::1/64"), ip_interface("198.19.1.1/24")],
        dns=["198.19.0.53", "mesh.internal"],
        mtu=1420,
        peer_names={PEER_1: "node\none"},
    )


def test_rendered_text_is_stable_and_complete() -> None:
    assert render() == expected_text()
    assert render() == render()


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="DNS entry 'a b'"):
        render_wgquick(device(), [], dns=["a b"])
    with pytest.raises(ValueError, match="MTU 10"):
        render_wgquick(device(), [], mtu=10)


def test_written_atomically_with_mode_0600(tmp_path: Path) -> None:
    path = wgquick_path(WG_IF, tmp_path / "wireguard")
    assert path == tmp_path / "wireguard" / f"{WG_IF}.conf"
    old_umask = os.umask(0)  # even a permissive umask must not widen the mode
    try:
        text = export_wgquick(device(), [ip_interface("198.19.1.1/24")], path)
    finally:
        os.umask(old_umask)
    assert path.read_text() == text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_real_wg_quick_and_wg_accept_it(namespaces: Namespaces, tmp_path: Path) -> None:
    path = tmp_path / f"{WG_IF}.conf"
    path.write_text(render())
    path.chmod(0o600)
    stripped = run("wg-quick", "strip", str(path)).stdout
    assert "Address" not in stripped and "DNS" not in stripped and "MTU" not in stripped
    assert f"PrivateKey = {KEY.base64()}" in stripped
    (tmp_path / "stripped.conf").write_text(stripped)

    ns = namespaces.add("wgt2q1")
    backend = namespaces.backend(ns)
    backend.create(WG_IF)
    pid = backend.pid(WG_IF)
    assert pid is not None
    run("nsenter", "-t", str(pid), "-m", "-n", "wg", "setconf", WG_IF, str(tmp_path / "stripped.conf"))
    assert backend.read(WG_IF).config() == device()
    assert diff(backend.read(WG_IF), device()).changes == ()

    # and back: what the device reads exports to the same wg-quick text
    again = render_wgquick(
        backend.read(WG_IF),
        [ip_interface("fd19::1/64"), ip_interface("198.19.1.1/24")],
        dns=["198.19.0.53", "mesh.internal"],
        mtu=1420,
        peer_names={PEER_1: "node one"},
    )
    assert again == expected_text()
