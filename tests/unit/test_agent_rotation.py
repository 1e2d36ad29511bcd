"""The rotating node's state machine and the peer's judgement of a notice, driven against a small
simulated world (disk, device, controller, peers): crash at every step, a peer offline, a lost notice,
a controller away. Time is an input; nothing sleeps."""

from __future__ import annotations

import base64
import itertools
from dataclasses import dataclass, field

import pytest

from agent.rotation import (
    CONFIRM_GRACE_S,
    Action,
    AdoptKey,
    AlreadySwapped,
    Event,
    Forget,
    KeyOverrides,
    KnownPeer,
    NoticeRefused,
    NotifyPeers,
    PendingRotation,
    Persist,
    ReportKey,
    Rotation,
    Swap,
    SwitchDevice,
    judge_notice,
)
from keys.types import IdentityPrivateKey, WireGuardPrivateKey, WireGuardPublicKey
from wire.rotation import RotationNotice, signing_bytes


class Crash(Exception):
    pass


@dataclass
class Peer:
    holds: WireGuardPublicKey
    online: bool = True
    loses_notice: bool = False
    confirmed: bool = False


@dataclass
class World:
    """Everything the driver touches. `crash_at`: the number of the action that never runs."""

    disk_key: WireGuardPrivateKey
    device_key: WireGuardPublicKey | None
    controller_key: WireGuardPublicKey
    peers: dict[int, Peer]
    requested: int | None = 7
    controller_up: bool = True
    disk_pending: PendingRotation | None = None
    controller_pending: WireGuardPublicKey | None = None
    destroyed: list[str] = field(default_factory=list)
    crash_at: int | None = None
    down_after_prepare: bool = False
    done_actions: int = 0
    now: float = 1000.0
    events: list[str] = field(default_factory=list)

    def run(self, machine: Rotation, actions: list[Action]) -> None:
        queue = list(actions)
        while queue:
            action = queue.pop(0)
            if self.crash_at is not None and self.done_actions == self.crash_at:
                self.crash_at = None
                raise Crash
            self.done_actions += 1
            queue[:0] = self.perform(machine, action)

    def perform(self, m: Rotation, action: Action) -> list[Action]:
        if isinstance(action, Persist):
            self.disk_pending = action.pending
        elif isinstance(action, Forget):
            self.disk_pending = None
            self.destroyed.append(action.destroyed)
        elif isinstance(action, AdoptKey):
            self.disk_key = action.new_key
        elif isinstance(action, SwitchDevice):
            self.device_key = action.new_key.public_key()
            return m.switched(self.now)
        elif isinstance(action, NotifyPeers):
            for peer in self.peers.values():
                if peer.online and not peer.loses_notice and peer.holds == action.old_public_key:
                    peer.holds, peer.confirmed = action.new_public_key, True
        elif isinstance(action, ReportKey):
            if not self.controller_up:
                return m.reported(action.phase, "unreachable", self.now)
            repeated_commit = action.phase == "commit" and action.public_key == self.controller_key
            if self.requested != action.rotation_id and not repeated_commit:
                return m.reported(action.phase, "refused", self.now)
            if action.phase == "prepare":
                self.controller_pending = action.public_key
                self.controller_up = not self.down_after_prepare
            else:
                self.controller_key, self.requested = action.public_key, None
                self.push_maps()
            return m.reported(action.phase, "ok", self.now)
        elif isinstance(action, Event):
            self.events.append(action.name)
        return []

    def push_maps(self) -> None:
        for peer in self.peers.values():
            if peer.online and peer.holds != self.controller_key:
                peer.holds = self.controller_key

    def unconfirmed(self) -> int:
        return sum(1 for p in self.peers.values() if not p.confirmed and p.holds != self.device_key)


def world(n_peers: int = 3, **kw: object) -> World:
    key = WireGuardPrivateKey.generate()
    w = World(
        disk_key=key,
        device_key=key.public_key(),
        controller_key=key.public_key(),
        peers={i: Peer(key.public_key()) for i in range(2, 2 + n_peers)},
    )
    for k, v in kw.items():
        setattr(w, k, v)
    return w


def drive(w: World, machine: Rotation | None = None, max_steps: int = 400) -> Rotation:
    """Run the agent loop until the rotation the controller asked for is over: the map asks, the
    machine acts, time passes in 1 s ticks; a crash restarts the machine from what the disk holds."""
    m = machine or Rotation()
    for _ in range(max_steps):
        try:
            if m.pending is None and w.requested is not None and w.requested != m.finished:
                w.run(m, m.request(w.requested, w.disk_key, WireGuardPrivateKey.generate(), w.now))
            elif m.pending is None:
                return m
            else:
                w.run(m, m.tick(w.now, w.unconfirmed()))
        except Crash:
            m = Rotation(w.disk_pending)
            w.events.append("restart")
            try:
                w.run(m, m.resume(w.device_key, w.now))
            except Crash:  # pragma: no cover - one crash per scenario
                raise AssertionError("crashed twice") from None
        w.now += 1.0
    raise AssertionError(f"rotation did not finish: {m.pending}")


def assert_rotated(w: World, old: WireGuardPublicKey) -> None:
    assert w.device_key != old
    assert w.disk_key.public_key() == w.device_key == w.controller_key
    assert w.disk_pending is None and w.requested is None
    for node_id, peer in w.peers.items():
        if peer.online:
            assert peer.holds == w.device_key, f"peer {node_id} holds a stale key"


def test_a_rotation_goes_through_every_phase_and_destroys_the_old_key() -> None:
    w = world()
    old = w.device_key
    assert old is not None
    drive(w)
    assert_rotated(w, old)
    assert w.events == ["rotation_started", "key_switched", "rotation_recorded", "rotation_done"]
    assert w.destroyed == ["old"]


def test_the_switch_comes_first_then_the_notices_then_the_commit() -> None:
    w = world()
    m = Rotation()
    first = m.request(7, w.disk_key, WireGuardPrivateKey.generate(), w.now)
    assert [type(a) for a in first] == [Persist, Event, ReportKey]
    after_prepare = m.reported("prepare", "ok", w.now)
    assert [type(a) for a in after_prepare] == [Persist, SwitchDevice]
    pending = after_prepare[0]
    assert isinstance(pending, Persist) and pending.pending.phase == "switching"
    after_switch = m.switched(w.now)
    assert [type(a) for a in after_switch] == [Persist, NotifyPeers, AdoptKey, Event, ReportKey]
    report = after_switch[-1]
    assert isinstance(report, ReportKey) and report.phase == "commit"


def count_actions() -> int:
    w = world()
    drive(w)
    return w.done_actions


@pytest.mark.parametrize("crash_at", range(count_actions()))
def test_a_crash_at_any_step_resumes_or_aborts_and_never_leaves_a_half_rotated_mesh(crash_at: int) -> None:
    w = world(crash_at=crash_at)
    old = w.device_key
    assert old is not None
    drive(w)
    assert "restart" in w.events
    assert_rotated(w, old)


def test_a_crash_before_the_notices_aborts_and_the_map_starts_it_again_with_a_fresh_key() -> None:
    w = world(crash_at=3)  # Persist(prepared), Event, ReportKey(prepare) ran; Persist(switching) did not
    old = w.device_key
    assert old is not None
    drive(w)
    assert w.events.count("rotation_aborted") == 1 and w.destroyed[0] == "new"
    assert_rotated(w, old)


def test_a_lost_notice_converges_from_the_controllers_map() -> None:
    w = world()
    w.peers[3].loses_notice = True
    old = w.device_key
    assert old is not None
    drive(w)
    assert_rotated(w, old)
    assert w.peers[3].confirmed is False  # it got the key from its map, not from the notice


def test_an_offline_peer_keeps_the_old_key_only_until_the_grace_and_converges_from_its_next_map() -> None:
    w = world()
    w.peers[4].online = False
    old = w.device_key
    assert old is not None
    start = w.now
    drive(w)
    assert_rotated(w, old)
    assert w.now - start >= CONFIRM_GRACE_S  # the old key was kept while a peer might still use it
    assert w.peers[4].holds == old
    w.peers[4].online = True
    w.push_maps()  # its next map
    assert w.peers[4].holds == w.device_key


def test_a_controller_away_when_the_rotation_is_due_delays_it_and_changes_nothing() -> None:
    w = world(controller_up=False)
    old = w.device_key
    m = Rotation()
    w.run(m, m.request(7, w.disk_key, WireGuardPrivateKey.generate(), w.now))
    for _ in range(100):
        w.now += 1.0
        w.run(m, m.tick(w.now, w.unconfirmed()))
    assert m.phase == "prepared"
    assert w.device_key == old and all(p.holds == old for p in w.peers.values())
    w.controller_up = True
    assert old is not None
    drive(w, m)
    assert_rotated(w, old)


def test_retries_back_off() -> None:
    w = world(controller_up=False)
    m = Rotation()
    w.run(m, m.request(7, w.disk_key, WireGuardPrivateKey.generate(), w.now))
    reports = []
    for _ in range(200):
        w.now += 1.0
        before = w.done_actions
        w.run(m, m.tick(w.now, 0))
        if w.done_actions > before:
            reports.append(w.now)
    gaps = [b - a for a, b in itertools.pairwise(reports)]
    assert gaps == sorted(gaps) and gaps[-1] == 30.0


def test_a_controller_away_after_the_switch_keeps_reporting_until_it_records() -> None:
    w = world()
    old = w.device_key
    assert old is not None
    w.down_after_prepare = True
    m = Rotation()
    w.run(m, m.request(7, w.disk_key, WireGuardPrivateKey.generate(), w.now))
    assert m.phase == "switched" and w.controller_key == old
    assert all(p.holds == w.device_key for p in w.peers.values())  # the notices carried the mesh
    w.controller_up, w.down_after_prepare = True, False
    drive(w, m)
    assert_rotated(w, old)


def test_a_refused_prepare_aborts_and_destroys_the_new_key() -> None:
    w = world(requested=None)  # the controller cancelled rotation 7
    old = w.device_key
    m = Rotation()
    w.run(m, m.request(7, w.disk_key, WireGuardPrivateKey.generate(), w.now))
    assert m.pending is None and w.destroyed == ["new"]
    assert w.device_key == old == w.controller_key and w.disk_key.public_key() == old
    assert m.request(7, w.disk_key, WireGuardPrivateKey.generate(), w.now) == []  # not again


def test_a_second_request_while_one_runs_is_ignored() -> None:
    w = world(controller_up=False)
    m = Rotation()
    w.run(m, m.request(7, w.disk_key, WireGuardPrivateKey.generate(), w.now))
    assert m.request(8, w.disk_key, WireGuardPrivateKey.generate(), w.now) == []


# --- the peer's side ----------------------------------------------------------------------------------


def signed_notice(
    identity: IdentityPrivateKey, old: WireGuardPublicKey, new: WireGuardPublicKey
) -> RotationNotice:
    notice = RotationNotice(node_id=5, rotation_id=3, old_wg_public_key=old, new_wg_public_key=new)
    sig = base64.b64encode(identity.sign(signing_bytes(notice))).decode()
    return notice.model_copy(update={"signature": sig})


@pytest.fixture
def setting() -> tuple[IdentityPrivateKey, WireGuardPublicKey, WireGuardPublicKey, dict[int, KnownPeer]]:
    identity = IdentityPrivateKey.generate()
    old = WireGuardPrivateKey.generate().public_key()
    new = WireGuardPrivateKey.generate().public_key()
    return identity, old, new, {5: KnownPeer(5, identity.public_key(), old)}


def test_a_peer_swaps_on_a_good_notice_and_keeps_the_new_key_until_its_map_says_so(setting) -> None:  # type: ignore[no-untyped-def]
    identity, old, new, peers = setting
    overrides = KeyOverrides()
    decision = judge_notice(signed_notice(identity, old, new), peers, [old], overrides)
    assert decision == Swap(5, old, new)
    overrides.add(decision)
    assert overrides.key_of(5, old) == new  # an old map still naming the old key
    assert judge_notice(signed_notice(identity, old, new), peers, [new], overrides) == AlreadySwapped(5)
    overrides.prune({5: old})
    assert len(overrides) == 1
    overrides.prune({5: new})
    assert len(overrides) == 0 and overrides.key_of(5, new) == new


@pytest.mark.parametrize(
    "case", ["unknown node", "forged signature", "stale old key", "not on device", "bad base64"]
)
def test_a_peer_refuses_notices_it_cannot_trust(setting, case: str) -> None:  # type: ignore[no-untyped-def]
    identity, old, new, peers = setting
    notice = signed_notice(identity, old, new)
    device = [old]
    if case == "unknown node":
        notice = notice.model_copy(update={"node_id": 9})
    elif case == "forged signature":
        notice = signed_notice(IdentityPrivateKey.generate(), old, new)
    elif case == "stale old key":
        other = WireGuardPrivateKey.generate().public_key()
        notice = signed_notice(identity, other, new)
    elif case == "not on device":
        device = []
    else:
        notice = notice.model_copy(update={"signature": "%%%"})
    assert isinstance(judge_notice(notice, peers, device, KeyOverrides()), NoticeRefused)


def test_a_key_changed_by_the_map_becomes_one_swap_with_the_live_endpoint() -> None:
    from ipaddress import ip_network

    from agent.device import Device, DeviceConfig, PeerConfig, PeerStatus
    from agent.rotation import fallback_swaps

    old, new, other = (WireGuardPrivateKey.generate().public_key() for _ in range(3))
    nets = (ip_network("198.19.0.4/32"), ip_network("198.19.0.9/32"))
    device = Device(
        "wg0",
        WireGuardPrivateKey.generate(),
        51820,
        None,
        {
            old: PeerStatus(PeerConfig(old, nets, "198.18.9.9:4000", 25), last_handshake=5.0),
            other: PeerStatus(PeerConfig(other, (ip_network("198.19.0.7/32"),))),
        },
    )
    desired = DeviceConfig.build(
        WireGuardPrivateKey.generate(),
        [PeerConfig(new, nets, "198.18.0.4:51820", 25), PeerConfig(other, (ip_network("198.19.0.7/32"),))],
    )
    (swap,) = fallback_swaps(device, desired, 25)
    assert swap.old == old and swap.new.public_key == new
    assert swap.new.endpoint == "198.18.9.9:4000"  # roamed, as the device learned it
    assert swap.new.allowed_ips == nets and swap.new.persistent_keepalive == 25

    overrides = KeyOverrides()
    overrides.add(Swap(4, old, new))
    stale = DeviceConfig.build(desired.private_key, [PeerConfig(old, nets, None, 25)])
    assert set(overrides.apply_to(stale).peers) == {new}
