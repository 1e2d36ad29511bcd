"""What every host network implementation does (tailscale's `Router{Up, Set(Config), Close}`), and the
whole desired state it is given. Pure.

Rules:
- `set` is declarative and idempotent: it receives the whole desired state, touches only what differs,
  and returns one readable line per change made (empty: nothing to do).
- Implementations are synchronous; the agent calls them from a worker thread.
- Errors are `OSError`s (or ValueError for a config the host cannot take) whose message says what and
  where.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv6Interface
from typing import Protocol

from agent.device import IPNetwork

IPInterface = IPv4Interface | IPv6Interface


@dataclass(frozen=True)
class HostConfig:
    """The host side of one interface: exactly these addresses on it, exactly these routes into it (of
    the routes wgmesh owns), and forwarding between its peers on or off."""

    addresses: tuple[IPInterface, ...] = ()
    routes: tuple[IPNetwork, ...] = ()
    forward: bool = False


class HostNetwork(Protocol):
    def up(self, ifname: str) -> None:
        """Work on `ifname` from now on (the backend created it)."""

    def set(self, config: HostConfig) -> list[str]:
        """Make the interface's host side match `config`; one line per change made."""
        ...

    def close(self) -> None:
        """Release what `up` took; the host keeps its configuration."""
