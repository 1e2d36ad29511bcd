"""Key rotation, pure: the rotating node's state machine (`Rotation`), the peer's judgement of a notice
(`judge_notice`), and the peer's key overrides until its map catches up (`KeyOverrides`).

No I/O and no clock: time comes in as `now`, randomness as the freshly made key, and every effect goes
out as an action the driver performs in order (tailscale mapSession / etcd-raft `Ready` style).

The rotating node's phases, each persisted (with both keys, 0600) before its effects run:

    (idle) --request--> prepared --controller ok--> switching --device switched--> switched
           --controller recorded--> recorded --every peer confirmed, or CONFIRM_GRACE_S--> (idle)

- prepared: the new key exists on the host only; the controller is asked to keep it as pending. A
  controller that cannot be reached delays the rotation (retry with backoff); one that refuses it
  (the rotation was cancelled, the node removed) aborts it: the new key is destroyed, nothing changed.
- switching: persisted BEFORE the device switches, so a crash mid-switch resumes forward.
- switched: the device runs the new key, which becomes the host's key file; only NOW do the notices go
  out (a peer that swapped before the switch would drop the packets still in flight on the old
  sessions, which it no longer holds), then the controller is told (retried until it answers: peers
  that missed the notice converge from the map it then pushes).
- recorded: the old private key is kept only until no peer uses it (each peer handshook after the
  switch or acked the notice) or CONFIRM_GRACE_S passed (a peer offline converges from its next map);
  then it is destroyed with the pending record.
A crash in `prepared` aborts (the device never saw the new key); in any later phase it resumes.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from agent.device import Device, DeviceConfig, PeerConfig, PeerStatus, PeerSwap
from keys.types import IdentityPublicKey, WireGuardPrivateKey, WireGuardPublicKey
from p2p.core.pacing import Backoff
from wire.rotation import KeyReportPhase, RotationNotice, signing_bytes

Phase = Literal["prepared", "switching", "switched", "recorded"]
ReportOutcome = Literal["ok", "unreachable", "refused"]

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0
CONFIRM_GRACE_S = 180.0
"""After this long no peer can still receive on a session of the old key (WireGuard's REJECT_AFTER_TIME)."""


@dataclass(frozen=True)
class PendingRotation:
    """A rotation under way, as persisted on the host."""

    rotation_id: int
    old_key: WireGuardPrivateKey
    new_key: WireGuardPrivateKey
    phase: Phase
    started_at: float
    switched_at: float | None = None
    retry_at: float = 0.0  # earliest time of the next controller report
    attempts: int = 0  # controller reports that did not get an answer, in a row


# --- actions ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Persist:
    pending: PendingRotation


@dataclass(frozen=True)
class Forget:
    """Destroy the pending record, and with it the key it holds that is no longer wanted."""

    destroyed: Literal["new", "old"]


@dataclass(frozen=True)
class ReportKey:
    rotation_id: int
    phase: KeyReportPhase
    public_key: WireGuardPublicKey


@dataclass(frozen=True)
class NotifyPeers:
    rotation_id: int
    old_public_key: WireGuardPublicKey
    new_public_key: WireGuardPublicKey


@dataclass(frozen=True)
class SwitchDevice:
    new_key: WireGuardPrivateKey


@dataclass(frozen=True)
class AdoptKey:
    """The new key becomes the host's key (the key file the agent's desired state is built from)."""

    new_key: WireGuardPrivateKey


@dataclass(frozen=True)
class Event:
    """Something for the event log."""

    name: str
    detail: Mapping[str, object] = field(default_factory=dict)


Action = Persist | Forget | ReportKey | NotifyPeers | SwitchDevice | AdoptKey | Event


_RETRY = Backoff(RETRY_FIRST_S, RETRY_MAX_S, jitter=0.0)  # the project's one backoff rule, no jitter


def _backoff(attempts: int) -> float:
    return _RETRY.delay(max(0, attempts - 1), 0.0)


class Rotation:
    """The rotating node's side. `pending` is None when no rotation runs."""

    def __init__(self, pending: PendingRotation | None = None) -> None:
        self.pending = pending
        self.finished: int | None = None  # the last rotation that finished or aborted here

    @property
    def phase(self) -> Phase | None:
        return self.pending.phase if self.pending is not None else None

    # --- inputs ------------------------------------------------------------------------------------

    def request(
        self, rotation_id: int, current_key: WireGuardPrivateKey, new_key: WireGuardPrivateKey, now: float
    ) -> list[Action]:
        """The map asks for rotation `rotation_id`. Ignored while one runs or when it is the one that
        just finished (the map still names it until the controller's next map)."""
        if self.pending is not None or rotation_id == self.finished:
            return []
        if new_key.public_key() == current_key.public_key():
            raise ValueError("the new key is the current key")
        self.pending = PendingRotation(rotation_id, current_key, new_key, "prepared", started_at=now)
        return [
            Persist(self.pending),
            Event("rotation_started", {"rotation_id": rotation_id, "new": new_key.public_key()}),
            *self._report("prepare", now),
        ]

    def reported(self, phase: KeyReportPhase, outcome: ReportOutcome, now: float) -> list[Action]:
        """The controller's answer to a ReportKey of `phase`."""
        p = self.pending
        if p is None or phase != _report_phase(p.phase):
            return []
        if outcome == "unreachable":
            attempts = p.attempts + 1
            self.pending = replace(p, attempts=attempts, retry_at=now + _backoff(attempts))
            return [Persist(self.pending)]
        if outcome == "refused":
            if p.phase == "prepared":
                self.pending, self.finished = None, p.rotation_id
                return [Forget("new"), Event("rotation_aborted", {"rotation_id": p.rotation_id})]
            # The device already runs the new key: going back would strand every peer that swapped.
            # Keep reporting; an operator sees the refusal in the log.
            attempts = p.attempts + 1
            self.pending = replace(p, attempts=attempts, retry_at=now + _backoff(attempts))
            return [Persist(self.pending), Event("rotation_commit_refused", {"rotation_id": p.rotation_id})]
        if p.phase == "prepared":
            return self._switch(replace(p, attempts=0, retry_at=0.0))
        self.pending = replace(p, phase="recorded", attempts=0, retry_at=0.0)
        return [Persist(self.pending), Event("rotation_recorded", {"rotation_id": p.rotation_id})]

    def switched(self, now: float) -> list[Action]:
        """The device now runs the new key: tell the peers, then the controller."""
        p = self.pending
        if p is None or p.phase != "switching":
            return []
        self.pending = replace(p, phase="switched", switched_at=now)
        return [
            Persist(self.pending),
            NotifyPeers(p.rotation_id, p.old_key.public_key(), p.new_key.public_key()),
            AdoptKey(p.new_key),
            Event("key_switched", {"rotation_id": p.rotation_id, "new": p.new_key.public_key()}),
            *self._report("commit", now),
        ]

    def tick(self, now: float, unconfirmed_peers: int) -> list[Action]:
        """Time passed. `unconfirmed_peers`: peers that neither acked nor handshook since the switch."""
        p = self.pending
        if p is None:
            return []
        if p.phase in ("prepared", "switched") and now >= p.retry_at and p.attempts > 0:
            return self._report(_report_phase(p.phase), now)
        if p.phase == "switching" and now >= p.retry_at:  # the device refused the switch: again
            return self._switch(replace(p, retry_at=now + RETRY_FIRST_S))
        if p.phase == "recorded":
            assert p.switched_at is not None
            if unconfirmed_peers <= 0 or now - p.switched_at >= CONFIRM_GRACE_S:
                self.pending, self.finished = None, p.rotation_id
                return [
                    Forget("old"),
                    Event(
                        "rotation_done",
                        {
                            "rotation_id": p.rotation_id,
                            "took_s": round(now - p.started_at, 3),
                            "unconfirmed_peers": max(0, unconfirmed_peers),
                        },
                    ),
                ]
        return []

    def resume(self, device_key: WireGuardPublicKey | None, now: float) -> list[Action]:
        """After a restart with `pending` loaded from disk; `device_key`: the running device's public
        key (None: no device, say after a reboot)."""
        p = self.pending
        if p is None:
            return []
        if p.phase == "prepared":  # the map still asking for it starts it again with a fresh key
            self.pending = None
            return [
                Forget("new"),
                Event("rotation_aborted", {"rotation_id": p.rotation_id, "why": "restart"}),
            ]
        if p.phase == "switching":
            if device_key == p.new_key.public_key():
                return self.switched(now)
            return self._switch(p)
        actions: list[Action] = [AdoptKey(p.new_key)]
        if p.phase == "switched":
            actions += self._report("commit", now)
        return actions

    # --- internals ---------------------------------------------------------------------------------

    def _switch(self, p: PendingRotation) -> list[Action]:
        self.pending = replace(p, phase="switching")
        return [Persist(self.pending), SwitchDevice(p.new_key)]

    def _report(self, phase: KeyReportPhase, now: float) -> list[Action]:
        assert self.pending is not None
        return [ReportKey(self.pending.rotation_id, phase, self.pending.new_key.public_key())]


def _report_phase(phase: Phase) -> KeyReportPhase:
    return "prepare" if phase == "prepared" else "commit"


# --- the peer's side --------------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownPeer:
    """What a peer's map says about the rotating node."""

    node_id: int
    identity_public_key: IdentityPublicKey
    wg_public_key: WireGuardPublicKey


@dataclass(frozen=True)
class Swap:
    node_id: int
    old: WireGuardPublicKey
    new: WireGuardPublicKey


@dataclass(frozen=True)
class AlreadySwapped:
    node_id: int


@dataclass(frozen=True)
class NoticeRefused:
    reason: str


def verify_signature(message: RotationNotice, identity: IdentityPublicKey) -> bool:
    try:
        signature = base64.b64decode(message.signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(signature) == 64 and identity.verify_with_libcrypto(signature, signing_bytes(message))


def judge_notice(
    notice: RotationNotice,
    peers: Mapping[int, KnownPeer],
    device_keys: Iterable[WireGuardPublicKey],
    overrides: KeyOverrides,
) -> Swap | AlreadySwapped | NoticeRefused:
    """What a peer does with a notice: swap, nothing (it holds the new key already), or refuse it."""
    peer = peers.get(notice.node_id)
    if peer is None:
        return NoticeRefused(f"node {notice.node_id} is not a peer")
    if not verify_signature(notice, peer.identity_public_key):
        return NoticeRefused(f"node {notice.node_id}: the signature does not verify")
    on_device = set(device_keys)
    if notice.new_wg_public_key in on_device:
        return AlreadySwapped(notice.node_id)
    holding = overrides.key_of(peer.node_id, peer.wg_public_key)
    if notice.old_wg_public_key != holding:
        return NoticeRefused(f"node {notice.node_id}: the notice replaces a key this host does not hold")
    if holding not in on_device:
        return NoticeRefused(f"node {notice.node_id}: its key is not on the device")
    return Swap(notice.node_id, notice.old_wg_public_key, notice.new_wg_public_key)


class KeyOverrides:
    """Keys a peer swapped on a notice before its map said so: node id -> (key in the map, new key).
    Applied to every map until the map names the new key (or yet another one) for that node."""

    def __init__(self) -> None:
        self._keys: dict[int, tuple[WireGuardPublicKey, WireGuardPublicKey]] = {}

    def add(self, swap: Swap) -> None:
        self._keys[swap.node_id] = (swap.old, swap.new)

    def key_of(self, node_id: int, map_key: WireGuardPublicKey) -> WireGuardPublicKey:
        """The key this host uses for `node_id` whose map names `map_key`."""
        old_new = self._keys.get(node_id)
        return old_new[1] if old_new is not None and old_new[0] == map_key else map_key

    def prune(self, map_keys: Mapping[int, WireGuardPublicKey]) -> None:
        """Forget overrides the map caught up with: it names another key than the swapped one, or the
        node is gone."""
        for node_id, (old, _new) in list(self._keys.items()):
            if map_keys.get(node_id) != old:
                del self._keys[node_id]

    def __len__(self) -> int:
        return len(self._keys)

    def apply_to(self, desired: DeviceConfig) -> DeviceConfig:
        """`desired` (built from a map that may still name old keys) with every swapped key in place
        of the old one."""
        if not self._keys:
            return desired
        peers = dict(desired.peers)
        for old, new in self._keys.values():
            cfg = peers.pop(old, None)
            if cfg is not None:
                peers[new] = PeerConfig(
                    new, cfg.allowed_ips, cfg.endpoint, cfg.persistent_keepalive, cfg.preshared_key
                )
        return DeviceConfig(desired.private_key, desired.listen_port, desired.fwmark, peers)


# --- the swap itself --------------------------------------------------------------------------------


def swap_for(
    old: PeerStatus, new_key: WireGuardPublicKey, keepalive_s: int, desired: PeerConfig | None = None
) -> PeerSwap:
    """The one-call swap of `old` (as the device holds it) for `new_key`: every allowed IP the old peer
    has now, its live (maybe roamed) endpoint, its preshared key, and a keepalive so the handshake on
    the new key starts at once. `desired`, when the map already names the new key, wins for the
    allowed IPs and keepalive (the next reconcile then has nothing to change)."""
    cfg = old.config
    allowed = desired.allowed_ips if desired is not None else cfg.allowed_ips
    keepalive = (
        desired.persistent_keepalive if desired is not None else cfg.persistent_keepalive
    ) or keepalive_s
    endpoint = cfg.endpoint or (desired.endpoint if desired is not None else None)
    return PeerSwap(
        old.config.public_key, PeerConfig(new_key, allowed, endpoint, keepalive, cfg.preshared_key)
    )


def fallback_swaps(device: Device, desired: DeviceConfig, keepalive_s: int) -> list[PeerSwap]:
    """Peers whose key the map changed while the device still holds the old key (the notice was
    missed, or the host was away): each becomes a one-call swap rather than a removal and an addition,
    so its allowed IPs move atomically. An old peer is one on the device the map no longer names; its
    new key is the one new peer of the map that claims one of its allowed IPs."""
    swaps = []
    added = [cfg for key, cfg in desired.peers.items() if key not in device.peers]
    for key, status in device.peers.items():
        if key in desired.peers:
            continue
        claims = [cfg for cfg in added if set(cfg.allowed_ips) & set(status.config.allowed_ips)]
        if len(claims) == 1:
            swaps.append(swap_for(status, claims[0].public_key, keepalive_s, claims[0]))
    return swaps
