"""Observing a running lab: each host's WireGuard view, which pairs have a handshake, and the ping matrix.

`mesh_view` is pure (host views in, pair states out); `observe` and `ping_matrix` do the reading.
A pair counts as connected when either side reports a handshake with the other: a handshake is
mutual, the two views only differ by when they were read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address
from itertools import combinations

from lab.command import run
from lab.layout import WG_INTERFACE, HostLayout
from lab.netns import interface_ipv4
from lab.wgstate import WgDeviceView, read_device, read_kernel_device


@dataclass(frozen=True)
class HostView:
    name: str
    tunnel_address: IPv4Address | None  # None: the agent has not configured wg0 yet
    device: WgDeviceView | None  # None: the host has no WireGuard interface (or it does not answer)


@dataclass(frozen=True)
class PairState:
    a: str
    b: str
    a_has_b: bool  # b's key is a peer on a's interface
    b_has_a: bool
    handshake: float | None  # the newer of the two sides' last handshake; None: never

    @property
    def configured(self) -> bool:
        return self.a_has_b and self.b_has_a


@dataclass(frozen=True)
class MeshView:
    hosts: tuple[HostView, ...]
    pairs: tuple[PairState, ...]

    @property
    def complete(self) -> bool:
        """Every host has wg0 with its tunnel address, and every pair has a handshake."""
        return all(p.handshake is not None for p in self.pairs) and all(
            h.device is not None and h.tunnel_address is not None for h in self.hosts
        )

    def missing(self) -> list[PairState]:
        return [p for p in self.pairs if p.handshake is None]

    def count(self, what: str) -> int:
        if what == "interfaces":
            return sum(1 for h in self.hosts if h.device is not None and h.device.public_key is not None)
        if what == "addresses":
            return sum(1 for h in self.hosts if h.tunnel_address is not None)
        if what == "configured":
            return sum(1 for p in self.pairs if p.configured)
        if what == "handshakes":
            return sum(1 for p in self.pairs if p.handshake is not None)
        raise ValueError(what)

    def pair(self, a: str, b: str) -> PairState:
        for p in self.pairs:
            if {p.a, p.b} == {a, b}:
                return p
        raise KeyError((a, b))

    def handshake_time(self, viewer: str, peer: str) -> float | None:
        """`viewer`'s own last handshake with `peer` (None: never, or not a peer)."""
        hosts = {h.name: h for h in self.hosts}
        v, p = hosts[viewer].device, hosts[peer].device
        if v is None or p is None or p.public_key is None or p.public_key not in v.peers:
            return None
        return v.peers[p.public_key].last_handshake


def mesh_view(hosts: Sequence[HostView]) -> MeshView:
    def side(x: HostView, y: HostView) -> tuple[bool, float | None]:
        if x.device is None or y.device is None or y.device.public_key is None:
            return False, None
        peer = x.device.peers.get(y.device.public_key)
        return (peer is not None, peer.last_handshake if peer else None)

    pairs = []
    for x, y in combinations(hosts, 2):
        x_has, x_hs = side(x, y)
        y_has, y_hs = side(y, x)
        times = [t for t in (x_hs, y_hs) if t is not None]
        pairs.append(PairState(x.name, y.name, x_has, y_has, max(times) if times else None))
    return MeshView(tuple(hosts), tuple(pairs))


def read_host(host: HostLayout, backend: str = "userspace") -> HostView:
    """The host's view; `backend` says where its wg0 is read: the UAPI socket (userspace) or netlink."""
    device = (
        read_kernel_device(host.namespace, WG_INTERFACE)
        if backend == "kernel"
        else read_device(host.run_dir / f"{WG_INTERFACE}.sock")
    )
    return HostView(
        name=host.name, tunnel_address=interface_ipv4(host.namespace, WG_INTERFACE), device=device
    )


def observe(hosts: Sequence[HostLayout], backend: str = "userspace") -> MeshView:
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(hosts)))) as pool:
        return mesh_view(list(pool.map(lambda h: read_host(h, backend), hosts)))


_RTT = re.compile(r"= [\d.]+/([\d.]+)/")


def ping_once(
    namespace: str, address: IPv4Address, timeout_s: float = 1.0, attempts: int = 2
) -> float | None:
    """Average RTT in ms of one echo from inside `namespace`; None when `attempts` echoes all went unanswered."""
    for _ in range(attempts):
        done = run(
            [
                "ip",
                "netns",
                "exec",
                namespace,
                "ping",
                "-n",
                "-q",
                "-c",
                "1",
                "-W",
                f"{timeout_s:g}",
                str(address),
            ],
            check=False,
            timeout=timeout_s + 10,
        )
        m = _RTT.search(done.stdout)
        if done.returncode == 0 and m:
            return float(m.group(1))
    return None


@dataclass(frozen=True)
class PingResult:
    source: str
    target: str
    rtt_ms: float | None  # None: no answer (or the target has no tunnel address)


def ping_matrix(
    hosts: Sequence[HostLayout],
    addresses: dict[str, IPv4Address | None],
    *,
    timeout_s: float = 1.0,
    attempts: int = 2,
) -> list[PingResult]:
    """Every host pings every other host's tunnel address, in parallel."""
    jobs = [(s, t) for s in hosts for t in hosts if s.name != t.name]

    def one(job: tuple[HostLayout, HostLayout]) -> PingResult:
        s, t = job
        addr = addresses.get(t.name)
        rtt = ping_once(s.namespace, addr, timeout_s, attempts) if addr else None
        return PingResult(s.name, t.name, rtt)

    with ThreadPoolExecutor(max_workers=max(1, min(24, len(jobs)))) as pool:
        return list(pool.map(one, jobs))
