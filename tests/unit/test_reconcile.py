"""Reconcile as a user sees it: desired config in -> fake device text out, the changes a log would show,
and (property) convergence in one step from any state to any state without touching unchanged peers."""

from __future__ import annotations

from ipaddress import ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.backends import open_backend
from agent.backends.fake import FakeBackend
from agent.device import DeviceConfig, PeerConfig
from agent.reconcile import (
    ConflictingAllowedIPs,
    InvalidDesiredState,
    PeerAdded,
    PeerChanged,
    PeerRemoved,
    PrivateKeyRotated,
    diff,
)
from keys.types import PresharedKey, WireGuardPrivateKey, WireGuardPublicKey

# Letters are given in the order of the public keys, so the fake's sorted text lists peers A, B, C...
_KEYS = sorted(
    (WireGuardPrivateKey(bytes([i + 1]) * 32) for i in range(9)), key=lambda k: k.public_key().base64()
)
PRIV = dict(zip("ABCDEFGHS", _KEYS, strict=True))
PUB = {name: key.public_key() for name, key in PRIV.items()}
PSK = PresharedKey(b"\x07" * 32)
IF = "wg0"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def named(text: str) -> str:
    """Replace public keys with the letters tests use for them."""
    for name, pub in PUB.items():
        text = text.replace(pub.base64(), name).replace(pub.base64()[:8] + "…", name + "…")
    return text


def peer(name: str, *ips: str, **kw: object) -> PeerConfig:
    return PeerConfig(PUB[name], tuple(ip_network(i) for i in ips), **kw)  # type: ignore[arg-type]


def config(*peers: PeerConfig, key: str = "S", port: int | None = 51820) -> DeviceConfig:
    return DeviceConfig.build(PRIV[key], peers, listen_port=port)


def apply(fake: FakeBackend, desired: DeviceConfig) -> list[str]:
    current = fake.read(IF) if fake.exists(IF) else None
    fake.create(IF)
    rec = diff(current, desired)
    fake.apply(IF, rec.update)
    return [named(str(c)) for c in rec.changes]


def fresh() -> tuple[FakeBackend, Clock]:
    clock = Clock()
    fake = open_backend("fake", clock=clock)
    assert isinstance(fake, FakeBackend)
    return fake, clock


TABLE = [
    pytest.param(
        [config(peer("A", "10.0.0.2/32", endpoint="198.18.0.2:51820", persistent_keepalive=25))],
        """\
interface wg0
  public_key S
  listen_port 51820
  fwmark off
peer A
  allowed_ips 10.0.0.2/32
  endpoint 198.18.0.2:51820
  keepalive 25s
  preshared_key none
""",
        id="one-peer",
    ),
    pytest.param(
        [
            config(peer("A", "10.0.0.2/32"), peer("B", "10.0.0.3/32")),
            config(peer("B", "10.0.0.3/32", "10.9.0.0/16"), peer("C", "10.0.0.4/32", preshared_key=PSK)),
        ],
        """\
interface wg0
  public_key S
  listen_port 51820
  fwmark off
peer B
  allowed_ips 10.0.0.3/32, 10.9.0.0/16
  endpoint (none)
  keepalive off
  preshared_key none
peer C
  allowed_ips 10.0.0.4/32
  endpoint (none)
  keepalive off
  preshared_key set
""",
        id="remove-add-change",
    ),
    pytest.param(
        [
            config(peer("A", "10.0.0.2/32", "10.8.0.0/16"), peer("B", "10.0.0.3/32")),
            # the relay route moves from A to B
            config(peer("A", "10.0.0.2/32"), peer("B", "10.0.0.3/32", "10.8.0.0/16")),
        ],
        """\
interface wg0
  public_key S
  listen_port 51820
  fwmark off
peer A
  allowed_ips 10.0.0.2/32
  endpoint (none)
  keepalive off
  preshared_key none
peer B
  allowed_ips 10.0.0.3/32, 10.8.0.0/16
  endpoint (none)
  keepalive off
  preshared_key none
""",
        id="allowed-ip-moves",
    ),
    pytest.param(
        [config(peer("A", "10.0.0.2/32")), config(peer("A", "10.0.0.2/32"), key="H", port=51821)],
        """\
interface wg0
  public_key H
  listen_port 51821
  fwmark off
peer A
  allowed_ips 10.0.0.2/32
  endpoint (none)
  keepalive off
  preshared_key none
""",
        id="key-rotation-and-port",
    ),
]


@pytest.mark.parametrize(("steps", "expected"), TABLE)
def test_config_in_text_out(steps: list[DeviceConfig], expected: str) -> None:
    fake, _ = fresh()
    for desired in steps:
        apply(fake, desired)
    assert named(fake.render(IF)) == expected


def test_changes_read_old_to_new_and_never_show_secrets() -> None:
    fake, _ = fresh()
    apply(fake, config(peer("A", "10.0.0.2/32"), peer("B", "10.0.0.3/32")))
    changes = apply(
        fake,
        config(
            peer("A", "10.0.0.2/32", "10.8.0.0/16", persistent_keepalive=25, preshared_key=PSK),
            peer("C", "10.0.0.4/32", endpoint="198.18.0.4:51820"),
            key="H",
        ),
    )
    assert changes == [
        "private key rotated: public key S → H",
        "peer B… removed (allowed_ips 10.0.0.3/32)",
        "peer C… added: allowed_ips 10.0.0.4/32; endpoint 198.18.0.4:51820",
        "peer A… changed: allowed_ips 10.0.0.2/32 → 10.0.0.2/32, 10.8.0.0/16; "
        "persistent_keepalive off → 25s; preshared_key changed",
    ]
    text = " ".join(changes)
    for secret in (PRIV["S"], PRIV["H"], PSK):
        assert secret.base64() not in text
        assert secret.hex() not in text


def test_change_strings_name_short_public_keys() -> None:
    rec = diff(None, config(peer("A", "10.0.0.2/32")))
    added = [c for c in rec.changes if isinstance(c, PeerAdded)]
    assert str(added[0]) == f"peer {PUB['A'].base64()[:8]}… added: allowed_ips 10.0.0.2/32"
    assert str(rec.changes[0]) == f"private key set (public key {PUB['S'].base64()})"
    assert rec.summary() == "private key rotated, listen port changed, 1 peers added"


def test_same_state_twice_is_empty_and_keeps_handshakes() -> None:
    fake, clock = fresh()
    desired = config(peer("A", "10.0.0.2/32", endpoint="198.18.0.2:51820"), peer("B", "10.0.0.3/32"))
    apply(fake, desired)
    fake.handshake(IF, PUB["A"])
    clock.now = 2000.0
    rec = diff(fake.read(IF), desired)
    assert rec.is_empty() and rec.changes == () and rec.summary() == "no changes"
    fake.apply(IF, rec.update)
    assert "handshake 1000" in fake.render(IF)


def test_changing_one_peer_leaves_the_others_out_of_the_update() -> None:
    fake, _ = fresh()
    apply(fake, config(peer("A", "10.0.0.2/32"), peer("B", "10.0.0.3/32")))
    fake.handshake(IF, PUB["A"])
    fake.handshake(IF, PUB["B"])
    rec = diff(fake.read(IF), config(peer("A", "10.0.0.2/32"), peer("B", "10.0.0.3/32", "10.7.0.0/16")))
    assert [u.config.public_key for u in rec.update.upsert] == [PUB["B"]]
    assert rec.update.upsert[0].update_only is True
    assert rec.update.remove == () and rec.update.private_key is None
    fake.apply(IF, rec.update)
    assert named(fake.render(IF)).count("handshake 1000") == 2


def test_learned_endpoint_is_not_a_change_but_a_desired_one_is() -> None:
    fake, _ = fresh()
    apply(fake, config(peer("A", "10.0.0.2/32")))
    fake.roam(IF, PUB["A"], "198.18.7.7:4444")
    assert diff(fake.read(IF), config(peer("A", "10.0.0.2/32"))).changes == ()
    rec = diff(fake.read(IF), config(peer("A", "10.0.0.2/32", endpoint="198.18.0.2:51820")))
    assert [named(str(c)) for c in rec.changes] == [
        "peer A… changed: endpoint 198.18.7.7:4444 → 198.18.0.2:51820"
    ]
    assert isinstance(rec.changes[0], PeerChanged) and rec.changes[0].fields == ("endpoint",)


def test_removing_a_peer_and_rotating_the_key() -> None:
    fake, _ = fresh()
    apply(fake, config(peer("A", "10.0.0.2/32")))
    rec = diff(fake.read(IF), config(key="H"))
    kinds = [type(c) for c in rec.changes]
    assert kinds == [PrivateKeyRotated, PeerRemoved]
    assert rec.update.remove == (PUB["A"],)


def test_two_peers_claiming_one_network_is_refused() -> None:
    with pytest.raises(ConflictingAllowedIPs, match=r"10\.0\.0\.0/24 is given to two peers"):
        diff(None, config(peer("A", "10.0.0.0/24"), peer("B", "10.0.0.0/24")))


def test_own_key_as_a_peer_is_refused() -> None:
    with pytest.raises(InvalidDesiredState, match="own public key"):
        diff(None, config(peer("S", "10.0.0.2/32")))


def test_fwmark_set_and_cleared() -> None:
    fake, _ = fresh()
    fake.create(IF)
    fake.apply(IF, diff(None, DeviceConfig.build(PRIV["S"], fwmark=0x51)).update)
    assert "fwmark 0x51" in fake.render(IF)
    rec = diff(fake.read(IF), DeviceConfig.build(PRIV["S"]))
    assert [str(c) for c in rec.changes] == ["fwmark 0x51 → off"]
    assert rec.update.fwmark == 0
    fake.apply(IF, rec.update)
    assert "fwmark off" in fake.render(IF)


# --- property: any state -> any state in one step --------------------------------------------------

NETS = [ip_network(f"10.{i}.0.0/16") for i in range(8)] + [ip_network("fd00::/64")]
ENDPOINTS = [None, "198.18.0.1:51820", "198.18.0.2:51820", "[2001:db8::1]:51820"]
PEER_NAMES = list("ABCDEFG")  # S and H are device keys


@st.composite
def device_configs(draw: st.DrawFn) -> DeviceConfig:
    names = draw(st.lists(st.sampled_from(PEER_NAMES), unique=True, max_size=6))
    nets = draw(st.permutations(NETS))
    peers = []
    for i, name in enumerate(names):
        # disjoint allowed IPs: each peer draws from its own slice of the shuffled networks
        ips = draw(st.lists(st.sampled_from(nets[i::6]), unique=True, max_size=2))
        peers.append(
            PeerConfig(
                PUB[name],
                tuple(ips),
                endpoint=draw(st.sampled_from(ENDPOINTS)),
                persistent_keepalive=draw(st.sampled_from([None, 25])),
                preshared_key=draw(st.sampled_from([None, PSK])),
            )
        )
    return DeviceConfig.build(
        draw(st.sampled_from([PRIV["S"], PRIV["H"]])),
        peers,
        listen_port=draw(st.sampled_from([None, 51820, 51821])),
        fwmark=draw(st.sampled_from([None, 0x51])),
    )


@settings(max_examples=300, deadline=None)
@given(
    device_configs(),
    device_configs(),
    st.lists(st.sampled_from(PEER_NAMES), unique=True),
    st.lists(st.sampled_from(PEER_NAMES), unique=True),
)
def test_any_state_converges_in_one_step(
    start: DeviceConfig, desired: DeviceConfig, shaken: list[str], roamed: list[str]
) -> None:
    fake, clock = fresh()
    apply(fake, start)
    for name in shaken:
        if PUB[name] in start.peers:
            fake.handshake(IF, PUB[name])
    for name in roamed:  # the device learned an endpoint from the peer's packets
        if PUB[name] in start.peers:
            fake.roam(IF, PUB[name], "198.18.9.9:4444")
    before = fake.read(IF)
    clock.now = 5000.0

    rec = diff(before, desired)
    fake.apply(IF, rec.update)
    after = fake.read(IF)

    second = diff(after, desired)
    assert second.is_empty() and second.changes == ()
    got = after.config()
    assert got is not None and got.private_key.public_key() == desired.private_key.public_key()
    assert set(got.peers) == set(desired.peers)
    for key, want in desired.peers.items():
        have = got.peers[key]
        assert have.allowed_ips == want.allowed_ips
        assert have.persistent_keepalive == want.persistent_keepalive
        assert have.preshared_key == want.preshared_key
        if want.endpoint is not None:
            assert have.endpoint == want.endpoint
    touched: set[WireGuardPublicKey] = {u.config.public_key for u in rec.update.upsert}
    touched |= set(rec.update.remove)
    for key, status in before.peers.items():
        if key in desired.peers:
            # a surviving peer keeps its handshake, whether or not its config changed
            assert after.peers[key].last_handshake == status.last_handshake
        if key in desired.peers and key not in touched:
            assert after.peers[key] == status
