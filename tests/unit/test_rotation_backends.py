"""The two configuration calls of key rotation, as each backend encodes them (pure: UAPI text, netlink
call lists, the fake's state)."""

from __future__ import annotations

from ipaddress import ip_network

from agent.backends.fake import FakeBackend
from agent.backends.kernel import netlink_swap_calls, netlink_switch_calls
from agent.device import DeviceUpdate, KeySwitch, PeerConfig, PeerSwap, PeerUpdate
from agent.uapi import encode_swap, encode_switch
from keys.types import WireGuardPrivateKey

OLD = WireGuardPrivateKey.generate().public_key()
NEW = WireGuardPrivateKey.generate().public_key()
OTHER = WireGuardPrivateKey.generate().public_key()
NETS = (ip_network("198.19.0.5/32"), ip_network("198.19.0.9/32"))
SWAP = PeerSwap(OLD, PeerConfig(NEW, NETS, endpoint="198.18.0.5:51820", persistent_keepalive=25))


def test_the_uapi_swap_creates_the_new_peer_with_the_allowed_ips_before_removing_the_old() -> None:
    assert encode_swap(SWAP) == (
        "set=1\n"
        f"public_key={NEW.hex()}\nreplace_allowed_ips=true\n"
        "allowed_ip=198.19.0.5/32\nallowed_ip=198.19.0.9/32\n"
        "endpoint=198.18.0.5:51820\npersistent_keepalive_interval=25\n"
        f"preshared_key={'0' * 64}\n"
        f"public_key={OLD.hex()}\nremove=true\n\n"
    )


def test_the_uapi_switch_sets_the_key_then_turns_each_keepalive_off_and_on() -> None:
    key = WireGuardPrivateKey.generate()
    assert encode_switch(KeySwitch(key, ((OTHER, 25),))) == (
        f"set=1\nprivate_key={key.hex()}\n"
        f"public_key={OTHER.hex()}\nupdate_only=true\npersistent_keepalive_interval=0\n"
        f"public_key={OTHER.hex()}\nupdate_only=true\npersistent_keepalive_interval=25\n\n"
    )


def test_the_netlink_calls_follow_the_same_order() -> None:
    add, remove = netlink_swap_calls(SWAP)
    assert add["peer"]["public_key"] == NEW.base64() and add["peer"]["replace_allowed_ips"]
    assert add["peer"]["allowed_ips"] == ["198.19.0.5/32", "198.19.0.9/32"]
    assert remove == {"peer": {"public_key": OLD.base64(), "remove": True}}
    key = WireGuardPrivateKey.generate()
    calls = netlink_switch_calls(KeySwitch(key, ((OTHER, 25),)))
    assert calls[0] == {"private_key": key.base64()}
    assert [c["peer"]["persistent_keepalive"] for c in calls[1:]] == [0, 25]
    assert all("allowed_ips" not in c["peer"] for c in calls[1:])


def test_the_fake_swaps_and_switches_like_wireguard() -> None:
    fake = FakeBackend(clock=lambda: 100.0)
    fake.create("wg0")
    mine = WireGuardPrivateKey.generate()
    fake.apply(
        "wg0",
        DeviceUpdate(
            private_key=mine,
            upsert=(
                PeerUpdate(PeerConfig(OLD, NETS, endpoint="198.18.0.5:51820")),
                PeerUpdate(PeerConfig(OTHER, (ip_network("198.19.0.7/32"),))),
            ),
        ),
    )
    fake.swap_peer("wg0", SWAP)
    peers = fake.read("wg0").peers
    assert set(peers) == {NEW, OTHER} and peers[NEW].config.allowed_ips == NETS
    new_key = WireGuardPrivateKey.generate()
    fake.switch_key("wg0", KeySwitch(new_key, ((OTHER, 25),)))
    device = fake.read("wg0")
    assert device.private_key is not None and device.private_key.public_key() == new_key.public_key()
    assert device.peers[OTHER].config.persistent_keepalive == 25
