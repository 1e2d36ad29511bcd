"""A device's every field through a real backend and back, on each backend of the `wg_backend`
parameter (kernel: in the tests/kernel VM): what is applied is what is read, and reading it again is
no change."""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from agent.device import DeviceConfig, PeerConfig
from agent.reconcile import diff
from keys.types import PresharedKey, WireGuardPrivateKey
from tests.netns.harness import WG_IF, Namespaces

pytestmark = pytest.mark.kernel_tier


def test_device_round_trip_with_every_field(namespaces: Namespaces, wg_backend: str) -> None:
    ns = namespaces.add("wgt2u7")
    backend = namespaces.wg_backend(ns)
    backend.create(WG_IF)
    desired = DeviceConfig.build(
        WireGuardPrivateKey.generate(),
        [
            PeerConfig(
                WireGuardPrivateKey.generate().public_key(),
                (ip_network("198.19.7.2/32"), ip_network("fd07::/64")),
                endpoint="[2001:db8::7]:51820",
                persistent_keepalive=15,
                preshared_key=PresharedKey.generate(),
            ),
            PeerConfig(WireGuardPrivateKey.generate().public_key(), (ip_network("198.19.7.3/32"),)),
        ],
        listen_port=51999,
        fwmark=0x77,
    )
    backend.apply(WG_IF, diff(backend.read(WG_IF), desired).update)
    assert backend.read(WG_IF).config() == desired
    assert diff(backend.read(WG_IF), desired).changes == ()


def test_an_unclamped_private_key_is_not_a_change_forever(namespaces: Namespaces, wg_backend: str) -> None:
    """A backend may store the X25519-clamped key (wireguard-go does); reconcile must still see the same key."""
    ns = namespaces.add("wgt2u8")
    backend = namespaces.wg_backend(ns)
    backend.create(WG_IF)
    unclamped = WireGuardPrivateKey(b"\xff" * 32)
    desired = DeviceConfig.build(unclamped, listen_port=51820)
    backend.apply(WG_IF, diff(backend.read(WG_IF), desired).update)
    read = backend.read(WG_IF)
    assert read.private_key is not None and read.private_key.raw() != unclamped.raw()
    assert read.private_key.public_key() == unclamped.public_key()
    assert diff(read, desired).changes == ()
