"""The UAPI codec against what wireguard-go really sends (fixtures in tests/unit/data, captured from a
real wireguard-go by tests/unit/data/capture_uapi.py) and against the exact text we must send."""

from __future__ import annotations

import json
from ipaddress import ip_network
from pathlib import Path

import pytest

from agent.device import DeviceConfig, DeviceUpdate, PeerConfig, PeerUpdate
from agent.reconcile import diff
from agent.uapi import (
    GET_REQUEST,
    UapiErrno,
    UapiError,
    UapiProtocolError,
    check_errno,
    encode_set,
    parse_get,
)
from keys.types import PresharedKey, WireGuardPrivateKey, WireGuardPublicKey

DATA = Path(__file__).parent / "data"
KEYS = json.loads((DATA / "uapi_keys.json").read_text())
A = WireGuardPrivateKey.from_hex(KEYS["a_private_hex"])
B = WireGuardPrivateKey.from_hex(KEYS["b_private_hex"])
C_PUB = WireGuardPublicKey.from_hex(KEYS["c_public_hex"])
PSK = PresharedKey.from_hex(KEYS["psk_hex"])


def fixture(name: str) -> str:
    return (DATA / name).read_text()


# --- parsing real replies ----------------------------------------------------------------------------


def test_fresh_device_has_only_its_random_port() -> None:
    dev = parse_get("wg0", fixture("uapi_get_fresh.txt"))
    assert dev.name == "wg0"
    assert dev.private_key is None and dev.fwmark is None and dev.peers == {}
    assert dev.listen_port is not None and 1024 <= dev.listen_port <= 65535
    assert dev.config() is None


def test_configured_device_reads_back_what_was_set() -> None:
    dev = parse_get("wgt2cap", fixture("uapi_get_configured.txt"))
    assert dev.private_key == A
    assert dev.listen_port == 51820
    assert dev.fwmark == 81
    b = dev.peers[B.public_key()]
    assert b.config.allowed_ips == (
        ip_network("10.77.0.0/16"),
        ip_network("198.19.251.2/32"),
        ip_network("fd77::/64"),
    )
    assert b.config.endpoint == "198.18.251.2:51820"
    assert b.config.persistent_keepalive == 25
    assert b.config.preshared_key == PSK
    assert b.last_handshake is None and b.rx_bytes == 0 and b.tx_bytes == 148
    assert b.protocol_version == 1
    c = dev.peers[C_PUB]
    assert c.config.endpoint == "[2001:db8::3]:51820"
    assert c.config.preshared_key is None  # the all-zero key means none
    assert c.config.persistent_keepalive is None
    assert c.config.allowed_ips == (ip_network("198.19.251.3/32"),)


def test_handshake_time_and_counters() -> None:
    dev = parse_get("wgt2cap", fixture("uapi_get_handshake.txt"))
    b = dev.peers[B.public_key()]
    assert b.last_handshake == pytest.approx(1795524747.326965755, abs=1e-6)
    assert (b.rx_bytes, b.tx_bytes) == (476, 712)
    assert dev.peers[C_PUB].last_handshake is None


def test_the_config_read_back_diffs_empty_against_what_was_set() -> None:
    desired = DeviceConfig.build(
        A,
        [
            PeerConfig(
                B.public_key(),
                (ip_network("198.19.251.2/32"), ip_network("10.77.0.0/16"), ip_network("fd77::/64")),
                endpoint="198.18.251.2:51820",
                persistent_keepalive=25,
                preshared_key=PSK,
            ),
            PeerConfig(C_PUB, (ip_network("198.19.251.3/32"),), endpoint="[2001:db8::3]:51820"),
        ],
        listen_port=51820,
        fwmark=81,
    )
    rec = diff(parse_get("wgt2cap", fixture("uapi_get_configured.txt")), desired)
    assert rec.is_empty() and rec.changes == ()


@pytest.mark.parametrize(
    ("name", "errno", "words"),
    [
        ("bad_key", 22, "EINVAL"),
        ("unknown_key", 22, "EINVAL"),
        ("bad_allowed_ip", 22, "EINVAL"),
        ("hostname_endpoint", 22, "EINVAL"),
        ("no_equals", 71, "EPROTO"),
    ],
)
def test_real_error_replies_become_clear_errors(name: str, errno: int, words: str) -> None:
    reply = fixture(f"uapi_err_{name}.txt")
    assert reply.startswith("errno=-")  # wireguard-go sends it negative
    with pytest.raises(UapiErrno) as caught:
        check_errno(reply, "set on wg0")
    assert caught.value.errno == errno
    assert str(caught.value).startswith(f"set on wg0 refused with errno {errno} ({words}:")
    with pytest.raises(UapiErrno):
        parse_get("wg0", reply)


def test_unknown_operation_gets_no_reply_at_all() -> None:
    # wireguard-go closes the connection without a word on an unknown operation.
    reply = fixture("uapi_err_unknown_operation.txt")
    assert reply == ""
    with pytest.raises(UapiProtocolError, match="no errno line"):
        check_errno(reply)


def test_set_reply_ok() -> None:
    check_errno(fixture("uapi_set_ok.txt"))


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ("listen_port=1\n", "no errno line"),
        ("listen_port\nerrno=0\n\n", "line 1: expected key=value"),
        ("listen_port=abc\nerrno=0\n\n", "line 1: listen_port='abc' is not a number"),
        ("public_key=zz\nerrno=0\n\n", "line 1: WireGuard public key: hex form must be 64"),
        (f"public_key={C_PUB.hex()}\nallowed_ip=10.0.0.1/8\nerrno=0\n\n", "line 2: allowed_ip '10.0.0.1/8'"),
        (f"public_key={C_PUB.hex()}\nendpoint=nonsense\nerrno=0\n\n", "endpoint 'nonsense'"),
        ("errno=x\n\n", "errno='x' is not a number"),
    ],
)
def test_malformed_replies_say_what_is_wrong(reply: str, message: str) -> None:
    with pytest.raises(UapiProtocolError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_get("wg0", reply)


def test_unknown_keys_in_a_reply_are_ignored() -> None:
    reply = f"listen_port=5\nsome_future_key=1\npublic_key={C_PUB.hex()}\nanother_one=x\nerrno=0\n\n"
    dev = parse_get("wg0", reply)
    assert dev.listen_port == 5 and set(dev.peers) == {C_PUB}


# --- encoding -----------------------------------------------------------------------------------------


def test_encode_a_full_update() -> None:
    update = DeviceUpdate(
        private_key=A,
        listen_port=51820,
        fwmark=0,
        remove=(C_PUB,),
        upsert=(
            PeerUpdate(
                PeerConfig(
                    B.public_key(),
                    (ip_network("198.19.251.2/32"), ip_network("fd77::/64")),
                    endpoint="198.18.251.2:51820",
                    persistent_keepalive=25,
                    preshared_key=PSK,
                ),
                update_only=True,
            ),
            PeerUpdate(PeerConfig(C_PUB, ())),
        ),
    )
    assert encode_set(update) == (
        "set=1\n"
        f"private_key={A.hex()}\n"
        "listen_port=51820\n"
        "fwmark=0\n"
        f"public_key={C_PUB.hex()}\n"
        "remove=true\n"
        f"public_key={B.public_key().hex()}\n"
        "update_only=true\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=198.19.251.2/32\n"
        "allowed_ip=fd77::/64\n"
        "endpoint=198.18.251.2:51820\n"
        "persistent_keepalive_interval=25\n"
        f"preshared_key={PSK.hex()}\n"
        f"public_key={C_PUB.hex()}\n"
        "replace_allowed_ips=true\n"
        "persistent_keepalive_interval=0\n"
        f"preshared_key={'0' * 64}\n"
        "\n"
    )


def test_encoding_never_replaces_all_peers_nor_uses_base64() -> None:
    text = encode_set(diff(None, DeviceConfig.build(A, [PeerConfig(B.public_key(), ())])).update)
    assert "replace_peers" not in text
    for key in (A, B.public_key()):
        assert key.base64() not in text
    assert f"public_key={B.public_key().hex()}\n" in text


def test_an_ipv6_endpoint_is_sent_bracketed() -> None:
    update = DeviceUpdate(upsert=(PeerUpdate(PeerConfig(C_PUB, (), endpoint="[2001:DB8:0::3]:51820")),))
    assert "endpoint=[2001:db8::3]:51820\n" in encode_set(update)


def test_a_host_name_endpoint_is_refused_before_sending() -> None:
    update = DeviceUpdate(upsert=(PeerUpdate(PeerConfig(C_PUB, (), endpoint="peer.example:51820")),))
    with pytest.raises(UapiError, match="host name; resolve it to an IP address first"):
        encode_set(update)


def test_get_request_is_the_documented_one() -> None:
    assert GET_REQUEST == "get=1\n\n"
