"""The host network of a dry run (`--backend fake`) and of component tests: remembers what it was asked
for, touches nothing, and reports changes the way the netlink one does. Pure."""

from __future__ import annotations

from agent.device import IPNetwork
from agent.hostnet.base import HostConfig, IPInterface


class FakeHostNetwork:
    def __init__(self) -> None:
        self.ifname: str | None = None
        self.addresses: dict[str, tuple[IPInterface, ...]] = {}
        self.routes: dict[str, tuple[IPNetwork, ...]] = {}
        self.forward: dict[str, bool] = {}

    def up(self, ifname: str) -> None:
        self.ifname = ifname

    def set(self, config: HostConfig) -> list[str]:
        ifname = self.ifname
        if ifname is None:
            raise ValueError("host network: set before up")
        old_addresses, old_routes = self.addresses.get(ifname, ()), self.routes.get(ifname, ())
        changes = [f"address {a} removed" for a in old_addresses if a not in config.addresses]
        changes += [f"address {a} added" for a in config.addresses if a not in old_addresses]
        changes += [f"route {r} removed" for r in old_routes if r not in config.routes]
        changes += [f"route {r} added" for r in config.routes if r not in old_routes]
        if self.forward.get(ifname, False) != config.forward:
            changes.append(f"forwarding {'on' if config.forward else 'off'}")
        self.addresses[ifname], self.routes[ifname] = config.addresses, config.routes
        self.forward[ifname] = config.forward
        return changes

    def close(self) -> None:
        self.ifname = None
