"""Backends without root: the factory's choices and messages, the fake's WireGuard semantics, the kernel
backend's translation to and from pyroute2's netlink messages (encoded and decoded by pyroute2 itself),
and the userspace backend's UAPI exchange against a local unix socket."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
from pyroute2.netlink.generic.wireguard import (
    WG_CMD_GET_DEVICE,
    WG_CMD_SET_DEVICE,
    WGPEER_F_REMOVE_ME,
    WGPEER_F_REPLACE_ALLOWEDIPS,
    WGPEER_F_UPDATE_ONLY,
    AsyncWireGuard,
    wgmsg,
)

import agent.backends.kernel as kernel_mod
import agent.backends.userspace as userspace_mod
from agent.backends import BACKEND_CHOICES, INSTALL_HINT, BackendError, BackendUnavailable, open_backend
from agent.backends.fake import FakeBackend
from agent.backends.kernel import ZERO_KEY_B64, device_from_netlink, netlink_set_calls
from agent.backends.userspace import UserspaceBackend, check_ifname, uapi_request
from agent.device import DeviceConfig, DeviceUpdate, PeerConfig, PeerUpdate
from agent.reconcile import diff
from agent.uapi import UapiError
from keys.types import PresharedKey, WireGuardPrivateKey

KEY = WireGuardPrivateKey.generate()
P1 = WireGuardPrivateKey.generate().public_key()
P2 = WireGuardPrivateKey.generate().public_key()
PSK = PresharedKey.generate()


# --- factory -------------------------------------------------------------------------------------------


def test_names_and_unknown_name() -> None:
    assert BACKEND_CHOICES == ("auto", "kernel", "userspace", "fake")
    with pytest.raises(
        ValueError, match="unknown backend 'wireguard': choose one of auto, kernel, userspace, fake"
    ):
        open_backend("wireguard")


def test_fake_takes_the_clock() -> None:
    backend = open_backend("fake", clock=lambda: 42.0)
    assert isinstance(backend, FakeBackend)
    backend.create("wg0")
    backend.apply("wg0", diff(None, DeviceConfig.build(KEY, [PeerConfig(P1)])).update)
    backend.handshake("wg0", P1)
    assert backend.read("wg0").peers[P1].last_handshake == 42.0


def test_auto_prefers_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel_mod, "kernel_module_present", lambda: True)
    assert open_backend("auto").name == "kernel"
    assert open_backend("kernel", netns="wgt2x").name == "kernel"


def test_auto_falls_back_to_userspace(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(kernel_mod, "kernel_module_present", lambda: False)
    monkeypatch.setattr(userspace_mod, "find_wireguard_go", lambda: "/usr/bin/wireguard-go")
    backend = open_backend("auto", netns="wgt2x", run_dir=tmp_path)
    assert isinstance(backend, UserspaceBackend)
    assert backend.socket_path("wg0") == tmp_path / "wg0.sock"
    assert backend.netns == "wgt2x"


def test_neither_gives_one_message_saying_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel_mod, "kernel_module_present", lambda: False)
    monkeypatch.setattr(userspace_mod, "find_wireguard_go", lambda: None)
    with pytest.raises(BackendUnavailable) as caught:
        open_backend("auto")
    assert str(caught.value) == INSTALL_HINT
    assert "apt install wireguard-go" in INSTALL_HINT and "modprobe wireguard" in INSTALL_HINT
    with pytest.raises(BackendUnavailable, match="apt install wireguard-go"):
        open_backend("userspace")
    with pytest.raises(BackendUnavailable, match="modprobe wireguard"):
        open_backend("kernel")


def test_interface_names_are_checked() -> None:
    check_ifname("wg0")
    check_ifname("a" * 15)
    for bad in ("", "a" * 16, "a/b", "a b", "a:b", ".."):
        with pytest.raises(BackendError, match="invalid interface name"):
            check_ifname(bad)


# --- fake ----------------------------------------------------------------------------------------------


def test_fake_follows_wireguard_semantics() -> None:
    fake = FakeBackend(clock=lambda: 7.0)
    with pytest.raises(BackendError, match="interface wg0 does not exist"):
        fake.read("wg0")
    fake.delete("wg0")  # missing: no-op
    fake.create("wg0")
    fake.create("wg0")  # idempotent
    fake.apply("wg0", DeviceUpdate(upsert=(PeerUpdate(PeerConfig(P1), update_only=True),)))
    assert fake.read("wg0").peers == {}  # update_only never creates
    fake.apply("wg0", DeviceUpdate(remove=(P1,)))  # removing an unknown peer: no-op
    unclamped = WireGuardPrivateKey(b"\xff" * 32)
    fake.apply("wg0", DeviceUpdate(private_key=unclamped, upsert=(PeerUpdate(PeerConfig(P1)),)))
    stored = fake.read("wg0").private_key
    assert stored is not None and stored.raw() != unclamped.raw()  # clamped, as WireGuard stores it
    assert stored.public_key() == unclamped.public_key()
    assert unclamped.base64() not in fake.render("wg0") and stored.base64() not in fake.render("wg0")
    assert len(fake.history("wg0")) == 3


def test_fake_fail_next_fails_once() -> None:
    fake = FakeBackend()
    fake.fail_next(BackendError("socket gone"))
    with pytest.raises(BackendError, match="socket gone"):
        fake.create("wg0")
    fake.create("wg0")
    assert fake.exists("wg0")


# --- kernel: to and from netlink ----------------------------------------------------------------------


def test_update_to_netlink_calls() -> None:
    update = DeviceUpdate(
        private_key=KEY,
        listen_port=51820,
        fwmark=0,
        remove=(P2,),
        upsert=(
            PeerUpdate(
                PeerConfig(
                    P1,
                    (ip_network("198.19.0.2/32"), ip_network("fd00::/64")),
                    endpoint="[2001:db8::1]:51820",
                    persistent_keepalive=25,
                    preshared_key=PSK,
                ),
                update_only=True,
            ),
            PeerUpdate(PeerConfig(P2, (ip_network("198.19.0.3/32"),), endpoint="198.18.0.3:51820")),
        ),
    )
    assert netlink_set_calls(update) == [
        {"private_key": KEY.base64(), "listen_port": 51820, "fwmark": 0},
        {"peer": {"public_key": P2.base64(), "remove": True}},
        {
            "peer": {
                "public_key": P1.base64(),
                "update_only": True,
                "replace_allowed_ips": True,
                "allowed_ips": ["198.19.0.2/32", "fd00::/64"],
                "persistent_keepalive": 25,
                "preshared_key": PSK.base64(),
                "endpoint_addr": "2001:db8::1",
                "endpoint_port": 51820,
            }
        },
        {
            "peer": {
                "public_key": P2.base64(),
                "update_only": False,
                "replace_allowed_ips": True,
                "allowed_ips": ["198.19.0.3/32"],
                "persistent_keepalive": 0,
                "preshared_key": ZERO_KEY_B64,
                "endpoint_addr": "198.18.0.3",
                "endpoint_port": 51820,
            }
        },
    ]
    assert netlink_set_calls(DeviceUpdate()) == []


def test_a_host_name_endpoint_is_refused_for_the_kernel() -> None:
    update = DeviceUpdate(upsert=(PeerUpdate(PeerConfig(P1, endpoint="peer.example:51820")),))
    with pytest.raises(BackendError, match="host name; resolve it first"):
        netlink_set_calls(update)


@pytest.fixture
def wg_encoder() -> Iterator[Any]:
    wg = AsyncWireGuard()  # only its message builder is used; nothing is sent
    try:
        yield wg
    finally:
        wg.close()


def test_pyroute2_encodes_our_peer_calls_as_the_kernel_expects(wg_encoder: Any) -> None:
    update = DeviceUpdate(
        remove=(P2,),
        upsert=(
            PeerUpdate(
                PeerConfig(P1, (ip_network("198.19.0.2/32"),), endpoint="198.18.0.2:51820"), update_only=True
            ),
        ),
    )
    decoded = []
    for call in netlink_set_calls(update):
        msg = wgmsg()
        msg["cmd"] = WG_CMD_SET_DEVICE
        msg["attrs"].append(["WGDEVICE_A_IFNAME", "wg0"])
        wg_encoder._wg_set_peer(msg, call["peer"])
        msg.encode()
        out = wgmsg(msg.data)
        out.decode()
        decoded.append(out.get_attr("WGDEVICE_A_PEERS")[0])
    removed, upserted = decoded
    assert removed.get_attr("WGPEER_A_FLAGS") == WGPEER_F_REMOVE_ME
    assert upserted.get_attr("WGPEER_A_FLAGS") == WGPEER_F_UPDATE_ONLY | WGPEER_F_REPLACE_ALLOWEDIPS
    assert [a["addr"] for a in upserted.get_attr("WGPEER_A_ALLOWEDIPS")] == ["198.19.0.2/32"]
    endpoint = upserted.get_attr("WGPEER_A_ENDPOINT")
    assert (endpoint["addr"], endpoint["port"]) == ("198.18.0.2", 51820)
    assert upserted.get_attr("WGPEER_A_PRESHARED_KEY") == ZERO_KEY_B64.encode()


def get_device_message(peers: list[list[Any]], with_key: bool = True) -> Any:
    """A WG_CMD_GET_DEVICE reply as the kernel sends it, encoded and decoded by pyroute2."""
    msg = wgmsg()
    msg["cmd"] = WG_CMD_GET_DEVICE
    msg["version"] = 1
    msg["attrs"] = [["WGDEVICE_A_IFNAME", "wg0"], ["WGDEVICE_A_LISTEN_PORT", 51820], ["WGDEVICE_A_FWMARK", 0]]
    if with_key:
        msg["attrs"].append(["WGDEVICE_A_PRIVATE_KEY", KEY.base64()])
    msg["attrs"].append(["WGDEVICE_A_PEERS", [{"attrs": attrs} for attrs in peers]])
    msg.encode()
    out = wgmsg(msg.data)
    out.decode()
    return out


def allowed(addr: bytes, family: int, mask: int) -> dict[str, Any]:
    return {
        "attrs": [
            ["WGALLOWEDIP_A_FAMILY", family],
            ["WGALLOWEDIP_A_IPADDR", addr],
            ["WGALLOWEDIP_A_CIDR_MASK", mask],
        ]
    }


def test_netlink_dump_to_device_merging_split_peers() -> None:
    first = get_device_message(
        [
            [
                ["WGPEER_A_PUBLIC_KEY", P1.base64()],
                ["WGPEER_A_PRESHARED_KEY", PSK.base64()],
                ["WGPEER_A_ENDPOINT", {"addr": "198.18.0.2", "port": 51820}],
                ["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 25],
                ["WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 1_700_000_000, "tv_nsec": 250_000_000}],
                ["WGPEER_A_RX_BYTES", 476],
                ["WGPEER_A_TX_BYTES", 712],
                ["WGPEER_A_ALLOWEDIPS", [allowed(bytes([198, 19, 0, 2]), 2, 32)]],
                ["WGPEER_A_PROTOCOL_VERSION", 1],
            ]
        ]
    )
    # the kernel continues a peer with many allowed IPs in the next message
    second = get_device_message(
        [
            [
                ["WGPEER_A_PUBLIC_KEY", P1.base64()],
                ["WGPEER_A_ALLOWEDIPS", [allowed(bytes([10, 8, 0, 0]), 2, 16)]],
            ],
            [
                ["WGPEER_A_PUBLIC_KEY", P2.base64()],
                ["WGPEER_A_PRESHARED_KEY", ZERO_KEY_B64],
                ["WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 0, "tv_nsec": 0}],
            ],
        ],
        with_key=False,
    )
    dev = device_from_netlink("wg0", [first, second])
    assert dev.private_key == KEY and dev.listen_port == 51820 and dev.fwmark is None
    p1 = dev.peers[P1]
    assert p1.config.allowed_ips == (ip_network("10.8.0.0/16"), ip_network("198.19.0.2/32"))
    assert p1.config.endpoint == "198.18.0.2:51820"
    assert p1.config.persistent_keepalive == 25 and p1.config.preshared_key == PSK
    assert p1.last_handshake == pytest.approx(1_700_000_000.25)
    assert (p1.rx_bytes, p1.tx_bytes, p1.protocol_version) == (476, 712, 1)
    p2 = dev.peers[P2]
    assert p2.last_handshake is None and p2.config.preshared_key is None and p2.config.endpoint is None


# --- userspace: the UAPI exchange ---------------------------------------------------------------------


def serve_once(path: Path, chunks: list[bytes]) -> threading.Thread:
    """A unix socket at `path` that reads one request and answers with `chunks`, one send each."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def answer() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                for chunk in chunks:
                    conn.sendall(chunk)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return thread


def test_a_reply_split_over_many_reads_is_assembled(tmp_path: Path) -> None:
    reply = f"public_key={P1.hex()}\nallowed_ip=10.0.0.2/32\nerrno=0\n\n".encode()
    thread = serve_once(tmp_path / "s.sock", [reply[i : i + 7] for i in range(0, len(reply), 7)])
    assert uapi_request(tmp_path / "s.sock", "get=1\n\n", timeout=5) == reply.decode()
    thread.join(5)


def test_a_reply_cut_short_is_an_error(tmp_path: Path) -> None:
    thread = serve_once(tmp_path / "s.sock", [b"listen_port=5\nerr"])
    with pytest.raises(UapiError, match="cut short"):
        uapi_request(tmp_path / "s.sock", "get=1\n\n", timeout=5)
    thread.join(5)


def test_no_socket_reads_as_a_clear_backend_error(tmp_path: Path) -> None:
    backend = UserspaceBackend(run_dir=tmp_path, binary="/usr/bin/wireguard-go")
    assert not backend.exists("wg0")
    with pytest.raises(BackendError, match="cannot read wg0: its UAPI socket does not answer"):
        backend.read("wg0")
    with pytest.raises(BackendError, match="cannot configure wg0: its UAPI socket does not answer"):
        backend.apply("wg0", DeviceUpdate(listen_port=1))
    backend.apply("wg0", DeviceUpdate())  # empty: nothing is sent, nothing fails
