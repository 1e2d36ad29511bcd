"""The interface every WireGuard backend implements, and the errors they raise.

A backend is synchronous: callers in asyncio run it with `asyncio.to_thread`. Every method is
idempotent where that makes sense (`create` on an existing interface attaches to it; `delete` on a
missing one does nothing).
"""

from __future__ import annotations

from typing import Protocol

from agent.device import Device, DeviceUpdate, KeySwitch, PeerSwap


class BackendError(RuntimeError):
    """A backend could not do what was asked; the message says what to do about it."""


class BackendUnavailable(BackendError):
    """This backend cannot work on this host (missing module or binary); the message says what to install."""


class Backend(Protocol):
    name: str  # "kernel" | "userspace" | "fake"

    def exists(self, ifname: str) -> bool: ...

    def create(self, ifname: str) -> None:
        """Make sure `ifname` exists as a WireGuard interface; attach to it if it already runs."""

    def delete(self, ifname: str) -> None:
        """Remove the interface (and stop its process, for userspace). Missing: no-op."""

    def read(self, ifname: str) -> Device: ...

    def apply(self, ifname: str, update: DeviceUpdate) -> None:
        """Apply an incremental update. Peers not named in `update` keep their sessions."""

    def swap_peer(self, ifname: str, swap: PeerSwap) -> None:
        """Key rotation on a peer, in one configuration call where the implementation has one (see
        `PeerSwap`): the new peer takes the old one's allowed IPs, then the old one is removed."""

    def switch_key(self, ifname: str, switch: KeySwitch) -> None:
        """Key rotation on the rotating node (see `KeySwitch`): new private key, keepalive kicks."""
