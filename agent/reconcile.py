"""Reconcile: the pure diff from what a device is (`Device`) to what it should be (`DeviceConfig`).

`diff(current, desired)` returns the incremental `DeviceUpdate` a backend applies and the typed
`Change`s (old -> new) that logs and metrics are made from.

Rules:
- Same desired state twice: the second diff is empty (no update, no changes).
- A peer whose configuration already matches is not named in the update at all, so its session and
  latest handshake survive. A changed peer is updated with `update_only` (never re-created); only a
  peer that is absent is created.
- The update never replaces all peers (UAPI `replace_peers` drops every session).
- Fields the desired state leaves open are not changes: `listen_port=None` lets the implementation
  choose, and `endpoint=None` lets WireGuard learn the peer's address from its packets (roaming).
- An allowed IP belongs to one peer only (WireGuard moves it to the last peer given it), so a desired
  state that gives the same network to two peers is refused with `ConflictingAllowedIPs`, and one
  listing the device's own public key as a peer (WireGuard ignores it) with `InvalidDesiredState`.
- A change's `str()` never shows private or preshared key material; public keys are shown shortened.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.device import (
    Device,
    DeviceConfig,
    DeviceUpdate,
    IPNetwork,
    PeerConfig,
    PeerUpdate,
)
from keys.types import WireGuardPublicKey

PEER_FIELDS = ("allowed_ips", "endpoint", "persistent_keepalive", "preshared_key")


class InvalidDesiredState(ValueError):
    """The desired state cannot be applied as given; the message says why. Nothing was changed."""


class ConflictingAllowedIPs(InvalidDesiredState):
    """The desired state gives the same allowed IP to more than one peer."""


def short_key(key: WireGuardPublicKey) -> str:
    """The first 8 base64 characters of a public key, enough to tell peers apart in a log line."""
    return key.base64()[:8] + "…"


def _ips(ips: tuple[IPNetwork, ...]) -> str:
    return ", ".join(str(ip) for ip in ips) if ips else "(none)"


def _field_text(config: PeerConfig | None, name: str) -> str:
    """A peer field as a log shows it; key material is never shown, only whether a key is set."""
    if config is None:
        return "-"
    if name == "allowed_ips":
        return _ips(config.allowed_ips)
    if name == "endpoint":
        return config.endpoint or "(learned)"
    if name == "persistent_keepalive":
        return f"{config.persistent_keepalive}s" if config.persistent_keepalive else "off"
    if name == "preshared_key":
        return "set" if config.preshared_key is not None else "none"
    raise ValueError(f"unknown peer field {name!r}")


@dataclass(frozen=True)
class PeerAdded:
    public_key: WireGuardPublicKey
    new: PeerConfig

    def __str__(self) -> str:
        parts = [f"allowed_ips {_ips(self.new.allowed_ips)}"]
        if self.new.endpoint:
            parts.append(f"endpoint {self.new.endpoint}")
        if self.new.persistent_keepalive:
            parts.append(f"keepalive {self.new.persistent_keepalive}s")
        if self.new.preshared_key is not None:
            parts.append("preshared_key set")
        return f"peer {short_key(self.public_key)} added: " + "; ".join(parts)


@dataclass(frozen=True)
class PeerRemoved:
    public_key: WireGuardPublicKey
    old: PeerConfig

    def __str__(self) -> str:
        return f"peer {short_key(self.public_key)} removed (allowed_ips {_ips(self.old.allowed_ips)})"


@dataclass(frozen=True)
class PeerChanged:
    public_key: WireGuardPublicKey
    old: PeerConfig
    new: PeerConfig
    fields: tuple[str, ...]  # names from PEER_FIELDS, in that order

    def __str__(self) -> str:
        parts = []
        for name in self.fields:
            if name == "preshared_key":
                parts.append("preshared_key " + ("changed" if self.new.preshared_key else "removed"))
            else:
                parts.append(f"{name} {_field_text(self.old, name)} → {_field_text(self.new, name)}")
        return f"peer {short_key(self.public_key)} changed: " + "; ".join(parts)


@dataclass(frozen=True)
class ListenPortChanged:
    old: int | None
    new: int

    def __str__(self) -> str:
        return f"listen port {self.old if self.old is not None else '(none)'} → {self.new}"


@dataclass(frozen=True)
class FwmarkChanged:
    old: int | None
    new: int | None

    def __str__(self) -> str:
        def show(mark: int | None) -> str:
            return hex(mark) if mark else "off"

        return f"fwmark {show(self.old)} → {show(self.new)}"


@dataclass(frozen=True)
class PrivateKeyRotated:
    """The private key changed; shown by the public keys it yields, never by its own bytes."""

    old_public_key: WireGuardPublicKey | None  # None: the device had no private key
    new_public_key: WireGuardPublicKey

    def __str__(self) -> str:
        if self.old_public_key is None:
            return f"private key set (public key {self.new_public_key})"
        return f"private key rotated: public key {self.old_public_key} → {self.new_public_key}"


Change = PeerAdded | PeerRemoved | PeerChanged | ListenPortChanged | FwmarkChanged | PrivateKeyRotated


@dataclass(frozen=True)
class Reconciliation:
    """What `diff` decided: the update to apply and the changes it makes, device fields first, then
    removed, added and changed peers, each group sorted by public key."""

    update: DeviceUpdate
    changes: tuple[Change, ...]

    def is_empty(self) -> bool:
        """True when the device already matches: nothing to apply."""
        return self.update.is_empty()

    def summary(self) -> str:
        """One line for a log: counts per kind of change, or 'no changes'."""
        if not self.changes:
            return "no changes"
        counts: dict[str, int] = {}
        for change in self.changes:
            label = {
                PeerAdded: "peers added",
                PeerRemoved: "peers removed",
                PeerChanged: "peers changed",
                ListenPortChanged: "listen port changed",
                FwmarkChanged: "fwmark changed",
                PrivateKeyRotated: "private key rotated",
            }[type(change)]
            counts[label] = counts.get(label, 0) + 1
        return ", ".join(f"{n} {label}" if "peers" in label else label for label, n in counts.items())


def changed_fields(old: PeerConfig, new: PeerConfig) -> tuple[str, ...]:
    """The PEER_FIELDS in which `new` asks for something `old` does not have.

    A desired endpoint of None is never a change: the device keeps whatever endpoint it learned.
    """
    fields = []
    if old.allowed_ips != new.allowed_ips:
        fields.append("allowed_ips")
    if new.endpoint is not None and old.endpoint != new.endpoint:
        fields.append("endpoint")
    if old.persistent_keepalive != new.persistent_keepalive:
        fields.append("persistent_keepalive")
    if old.preshared_key != new.preshared_key:
        fields.append("preshared_key")
    return tuple(fields)


def check_allowed_ips(peers: Mapping[WireGuardPublicKey, PeerConfig]) -> None:
    """Raise ConflictingAllowedIPs when two peers claim the same network."""
    owner: dict[IPNetwork, WireGuardPublicKey] = {}
    for key in sorted(peers, key=lambda k: k.raw()):
        for net in peers[key].allowed_ips:
            if net in owner:
                raise ConflictingAllowedIPs(
                    f"allowed IP {net} is given to two peers ({short_key(owner[net])} and "
                    f"{short_key(key)}); WireGuard routes a network to one peer only"
                )
            owner[net] = key


def diff(current: Device | None, desired: DeviceConfig) -> Reconciliation:
    """The update and changes that turn `current` (None: the device has no state yet) into `desired`.

    Raises InvalidDesiredState (ConflictingAllowedIPs when `desired` gives one network to two peers,
    or when it lists the device's own public key as a peer).
    """
    own = desired.private_key.public_key()
    if own in desired.peers:
        raise InvalidDesiredState(
            f"the desired state lists this device's own public key {short_key(own)} as a peer"
        )
    check_allowed_ips(desired.peers)
    changes: list[Change] = []

    # Keys are compared by their public keys: implementations store the private key clamped (X25519),
    # so a key that was not generated clamped reads back different bytes but is the same key.
    old_private = current.private_key if current is not None else None
    old_pub = old_private.public_key() if old_private is not None else None
    private_key = None
    if old_pub is None or old_pub != own:
        private_key = desired.private_key
        changes.append(PrivateKeyRotated(old_pub, own))

    old_port = current.listen_port if current is not None else None
    listen_port = None
    if desired.listen_port is not None and desired.listen_port != old_port:
        listen_port = desired.listen_port
        changes.append(ListenPortChanged(old_port, desired.listen_port))

    old_mark = (current.fwmark if current is not None else None) or None
    fwmark = None
    if old_mark != desired.fwmark:
        fwmark = desired.fwmark or 0
        changes.append(FwmarkChanged(old_mark, desired.fwmark))

    current_peers = {k: p.config for k, p in current.peers.items()} if current is not None else {}

    def order(keys: set[WireGuardPublicKey]) -> list[WireGuardPublicKey]:
        return sorted(keys, key=lambda k: k.raw())

    removed = order(set(current_peers) - set(desired.peers))
    added = order(set(desired.peers) - set(current_peers))
    upserts: list[PeerUpdate] = []
    for key in removed:
        changes.append(PeerRemoved(key, current_peers[key]))
    for key in added:
        changes.append(PeerAdded(key, desired.peers[key]))
        upserts.append(PeerUpdate(desired.peers[key], update_only=False))
    for key in order(set(desired.peers) & set(current_peers)):
        old, new = current_peers[key], desired.peers[key]
        fields = changed_fields(old, new)
        if fields:
            changes.append(PeerChanged(key, old, new, fields))
            upserts.append(PeerUpdate(new, update_only=True))

    update = DeviceUpdate(
        private_key=private_key,
        listen_port=listen_port,
        fwmark=fwmark,
        upsert=tuple(upserts),
        remove=tuple(removed),
    )
    return Reconciliation(update, tuple(changes))
