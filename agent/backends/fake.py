"""The fake backend: WireGuard devices in memory, with WireGuard's update semantics, rendered as canonical
text so tests are tables of config in -> text out.

It behaves like the real thing where reconcile depends on it:
- peers not named in an update keep their handshake time and counters; a changed peer keeps them too
  (WireGuard keeps the session when allowed IPs, endpoint, keepalive or preshared key change); a removed
  peer loses them;
- `update_only` never creates a peer; `remove` of an unknown peer is a no-op;
- an allowed IP given to one peer is taken away from any other peer (WireGuard's allowed-IPs trie);
- the private key is stored X25519-clamped, as WireGuard stores it;
- the allowed IPs of an upserted peer are replaced (`replace_allowed_ips`); a desired endpoint of None
  keeps the endpoint the device had learned.

Handshakes do not happen by themselves: `handshake()` records one at the
injected clock's time. Every applied update is kept in `history()` so a test can see that an apply
of the same state did nothing. `fail_next()` makes the next call raise, to exercise error paths.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from agent.backends.base import BackendError
from agent.device import Device, DeviceUpdate, KeySwitch, PeerConfig, PeerStatus, PeerSwap, PeerUpdate
from keys.types import WireGuardPrivateKey, WireGuardPublicKey


def clamped(key: WireGuardPrivateKey) -> WireGuardPrivateKey:
    """The key as WireGuard stores it: X25519-clamped (same public key, possibly different bytes)."""
    raw = bytearray(key.raw())
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    return WireGuardPrivateKey(bytes(raw))


@dataclass
class _FakeDevice:
    private_key: WireGuardPrivateKey | None = None
    listen_port: int | None = None
    fwmark: int | None = None
    peers: dict[WireGuardPublicKey, PeerStatus] = field(default_factory=dict)
    history: list[DeviceUpdate] = field(default_factory=list)


class FakeBackend:
    """In-memory devices. Thread safe: every public method holds one lock."""

    name = "fake"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._devices: dict[str, _FakeDevice] = {}
        self._lock = threading.Lock()
        self._fail: BackendError | None = None

    # --- Backend protocol ---------------------------------------------------------------------------

    def exists(self, ifname: str) -> bool:
        with self._lock:
            return ifname in self._devices

    def create(self, ifname: str) -> None:
        with self._lock:
            self._maybe_fail()
            self._devices.setdefault(ifname, _FakeDevice())

    def delete(self, ifname: str) -> None:
        with self._lock:
            self._maybe_fail()
            self._devices.pop(ifname, None)

    def read(self, ifname: str) -> Device:
        with self._lock:
            self._maybe_fail()
            dev = self._get(ifname)
            return Device(ifname, dev.private_key, dev.listen_port, dev.fwmark, dict(dev.peers))

    def apply(self, ifname: str, update: DeviceUpdate) -> None:
        with self._lock:
            self._maybe_fail()
            dev = self._get(ifname)
            dev.history.append(update)
            if update.private_key is not None:
                dev.private_key = clamped(update.private_key)
                # WireGuard drops a peer whose key is now the device's own public key.
                dev.peers.pop(update.private_key.public_key(), None)
            if update.listen_port is not None:
                dev.listen_port = update.listen_port or None
            if update.fwmark is not None:
                dev.fwmark = update.fwmark or None
            for key in update.remove:
                dev.peers.pop(key, None)
            for peer in update.upsert:
                self._upsert(dev, peer.config, peer.update_only)

    def swap_peer(self, ifname: str, swap: PeerSwap) -> None:
        with self._lock:
            self._maybe_fail()
            dev = self._get(ifname)
            dev.history.append(DeviceUpdate(upsert=(PeerUpdate(swap.new),), remove=(swap.old,)))
            self._upsert(dev, swap.new, update_only=False)
            if swap.old != swap.new.public_key:
                dev.peers.pop(swap.old, None)

    def switch_key(self, ifname: str, switch: KeySwitch) -> None:
        with self._lock:
            self._maybe_fail()
            dev = self._get(ifname)
            dev.history.append(DeviceUpdate(private_key=switch.private_key))
            dev.private_key = clamped(switch.private_key)
            dev.peers.pop(switch.private_key.public_key(), None)
            for key, seconds in switch.kick:
                status = dev.peers.get(key)
                if status is not None:
                    config = replace(status.config, persistent_keepalive=seconds)
                    dev.peers[key] = replace(status, config=config)

    # --- what only the fake can do ------------------------------------------------------------------

    def render(self, ifname: str) -> str:
        """The device as canonical text: device fields, then peers sorted by public key, one field a
        line, fields in a fixed order. Private and preshared keys are never shown, only whether set."""
        with self._lock:
            dev = self._get(ifname)
            lines = [f"interface {ifname}"]
            pub = dev.private_key.public_key().base64() if dev.private_key else "(no private key)"
            lines.append(f"  public_key {pub}")
            lines.append(f"  listen_port {dev.listen_port if dev.listen_port else 'auto'}")
            lines.append(f"  fwmark {hex(dev.fwmark) if dev.fwmark else 'off'}")
            for key in sorted(dev.peers, key=lambda k: k.base64()):
                status = dev.peers[key]
                cfg = status.config
                lines.append(f"peer {key.base64()}")
                ips = ", ".join(str(n) for n in cfg.allowed_ips) or "(none)"
                lines.append(f"  allowed_ips {ips}")
                lines.append(f"  endpoint {cfg.endpoint or '(none)'}")
                keepalive = f"{cfg.persistent_keepalive}s" if cfg.persistent_keepalive else "off"
                lines.append(f"  keepalive {keepalive}")
                lines.append(f"  preshared_key {'set' if cfg.preshared_key else 'none'}")
                if status.last_handshake is not None:
                    lines.append(f"  handshake {status.last_handshake:g}")
            return "\n".join(lines) + "\n"

    def handshake(self, ifname: str, public_key: WireGuardPublicKey) -> None:
        """Record a completed handshake with a configured peer at the clock's current time."""
        with self._lock:
            dev = self._get(ifname)
            status = self._peer(dev, ifname, public_key)
            dev.peers[public_key] = replace(status, last_handshake=self._clock(), protocol_version=1)

    def roam(self, ifname: str, public_key: WireGuardPublicKey, endpoint: str) -> None:
        """The peer's packets arrived from `endpoint`: the device learns it, as WireGuard does."""
        with self._lock:
            dev = self._get(ifname)
            status = self._peer(dev, ifname, public_key)
            dev.peers[public_key] = replace(status, config=replace(status.config, endpoint=endpoint))

    def history(self, ifname: str) -> list[DeviceUpdate]:
        """Every update applied to `ifname` since it was created, oldest first."""
        with self._lock:
            return list(self._get(ifname).history)

    def fail_next(self, error: BackendError) -> None:
        """Make the next create/delete/read/apply raise `error` (once)."""
        with self._lock:
            self._fail = error

    # --- internals ----------------------------------------------------------------------------------

    def _maybe_fail(self) -> None:
        if self._fail is not None:
            error, self._fail = self._fail, None
            raise error

    def _get(self, ifname: str) -> _FakeDevice:
        try:
            return self._devices[ifname]
        except KeyError:
            raise BackendError(f"interface {ifname} does not exist") from None

    @staticmethod
    def _peer(dev: _FakeDevice, ifname: str, key: WireGuardPublicKey) -> PeerStatus:
        try:
            return dev.peers[key]
        except KeyError:
            raise BackendError(f"{ifname} has no peer {key}") from None

    @staticmethod
    def _upsert(dev: _FakeDevice, config: PeerConfig, update_only: bool) -> None:
        if dev.private_key is not None and config.public_key == dev.private_key.public_key():
            return  # WireGuard ignores a peer with the device's own key
        old = dev.peers.get(config.public_key)
        if old is None and update_only:
            return
        claimed = set(config.allowed_ips)
        for key, status in list(dev.peers.items()):
            if key != config.public_key and claimed & set(status.config.allowed_ips):
                kept = tuple(n for n in status.config.allowed_ips if n not in claimed)
                dev.peers[key] = replace(status, config=replace(status.config, allowed_ips=kept))
        endpoint = config.endpoint
        if endpoint is None and old is not None:
            endpoint = old.config.endpoint
        new_config = replace(config, endpoint=endpoint)
        dev.peers[config.public_key] = (
            replace(old, config=new_config) if old is not None else PeerStatus(new_config)
        )
