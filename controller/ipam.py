"""IPAM: tunnel addresses from the mesh CIDR, unique names, and the holds that keep a removed node's
address out of use until no map names it any more.

Rules:
- Never two nodes on one address: `first_free` skips every taken address (live nodes and holds); the
  store's unique index on the address is the last line of defence.
- Lowest free address first, skipping the network address (and the IPv4 broadcast address).
- A removed node's address is held once per remaining node, until that node has acknowledged (polled
  with `since` >=) the first map serial without the removed node. Only then may the address return.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from wire.models import IPAddress, IPNetwork

MIN_POOL_HOSTS = 2


class PoolExhausted(Exception):
    """No free address is left in the mesh CIDR."""


def pool_problem(cidr: IPNetwork) -> str | None:
    """Why `cidr` cannot serve as a mesh CIDR, or None."""
    if hosts_in(cidr) < MIN_POOL_HOSTS:
        return f"mesh CIDR {cidr} is too small: it must hold at least {MIN_POOL_HOSTS} host addresses"
    return None


def hosts_in(cidr: IPNetwork) -> int:
    reserved = 2 if cidr.version == 4 else 1
    return max(0, cidr.num_addresses - reserved)


class AddressPool:
    """Host addresses of one mesh CIDR."""

    def __init__(self, cidr: IPNetwork) -> None:
        problem = pool_problem(cidr)
        if problem:
            raise ValueError(problem)
        self.cidr = cidr
        self._first = int(cidr.network_address) + 1
        self._count = hosts_in(cidr)

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return False
        return address.version == self.cidr.version and 0 <= int(address) - self._first < self._count

    def first_free(self, taken: Collection[IPAddress]) -> IPAddress:
        taken_ints = {int(a) for a in taken if a in self}
        for offset in range(min(self._count, len(taken_ints) + 1)):
            candidate = self._first + offset
            if candidate not in taken_ints:
                return ipaddress.ip_address(candidate)
        raise PoolExhausted(f"no free address left in {self.cidr} ({self._count} host addresses, all in use)")


def unique_name(hostname: str, taken: Collection[str]) -> str:
    """`hostname` itself when free, else the first of host-2, host-3, ... that is free (the suffix goes on
    the first label, which is cut to keep every label <= 63 and the name <= 253 characters)."""
    if hostname not in taken:
        return hostname
    first, dot, rest = hostname.partition(".")
    n = 2
    while True:
        suffix = f"-{n}"
        room = min(63, 253 - len(dot) - len(rest)) - len(suffix)
        candidate = f"{first[:room]}{suffix}{dot}{rest}"
        if candidate not in taken:
            return candidate
        n += 1


@dataclass(frozen=True)
class AddressHold:
    """`address` stays out of use until node `holder` acknowledges map serial `min_serial`."""

    address: IPAddress
    holder: int
    min_serial: int


class AddressHolds:
    """The holds on removed nodes' addresses, by holder."""

    def __init__(self, holds: Iterable[AddressHold] = ()) -> None:
        self._by_holder: dict[int, dict[IPAddress, int]] = {}
        for h in holds:
            self._by_holder.setdefault(h.holder, {})[h.address] = h.min_serial

    def hold(self, address: IPAddress, serials: Mapping[int, int]) -> list[AddressHold]:
        """Hold `address` for every node in `serials` (node -> first serial without the address)."""
        out = []
        for holder, serial in serials.items():
            self._by_holder.setdefault(holder, {})[address] = serial
            out.append(AddressHold(address, holder, serial))
        return out

    def acknowledge(self, holder: int, serial: int) -> bool:
        """`holder` holds map `serial` now; True when that released something."""
        held = self._by_holder.get(holder)
        if not held:
            return False
        released = [a for a, s in held.items() if s <= serial]
        for a in released:
            del held[a]
        if not held:
            del self._by_holder[holder]
        return bool(released)

    def drop_holder(self, holder: int) -> None:
        self._by_holder.pop(holder, None)

    def held(self) -> set[IPAddress]:
        return {a for held in self._by_holder.values() for a in held}

    def __len__(self) -> int:
        return sum(len(h) for h in self._by_holder.values())
