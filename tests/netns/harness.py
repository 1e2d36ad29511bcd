"""Harness of the namespace tier for the data plane (its fixtures are in conftest.py): network
namespaces, veth underlays and WireGuard backends, all named with the `wgt2` prefix and always removed, also when a test fails. The backend is
the `wg_backend` parameter (tests/conftest.py): real wireguard-go (`userspace`) on this machine, the
kernel module (`kernel`) in the tests/kernel VM. Only the wireguard-go processes started here are
ended, by pid (through the backend).

Every test here is in the root tier: without root or its tools, tests/conftest.py skips it with the
reason.
"""

from __future__ import annotations

import contextlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

from agent.backends.base import Backend
from agent.backends.kernel import KernelBackend
from agent.backends.userspace import UserspaceBackend

PREFIX = "wgt2"
WG_IF = "wgt2wg"  # the same WireGuard interface name in every namespace: they must not collide


def run(*argv: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


def in_ns(ns: str, *argv: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return run("ip", "netns", "exec", ns, *argv, check=check, timeout=timeout)


def ping(ns: str, address: str, count: int = 1, wait_s: float = 1.0) -> bool:
    """True when `address` answers an echo from namespace `ns`."""
    result = in_ns(ns, "ping", "-n", "-q", "-c", str(count), "-W", f"{wait_s:g}", address, check=False)
    return result.returncode == 0


def delete_netns(name: str) -> None:
    if Path("/run/netns", name).exists():
        run("ip", "netns", "del", name, check=False)


@dataclass
class Host:
    """One namespace with a backend (userspace: its sockets live in a private run dir)."""

    ns: str
    backend: Backend
    underlay: str  # the address on its veth, e.g. "198.18.250.1"

    def wg(self, *args: str) -> str:
        """The real `wg`, run where it sees the interface: in the namespace for the kernel module, in
        wireguard-go's mount+net namespace (where its socket is) for userspace."""
        if not isinstance(self.backend, UserspaceBackend):
            return in_ns(self.ns, "wg", *args).stdout
        pid = self.backend.pid(WG_IF)
        assert pid is not None, f"no wireguard-go running for {WG_IF} in {self.ns}"
        return run("nsenter", "-t", str(pid), "-m", "-n", "wg", *args).stdout


class Namespaces:
    """Creates `wgt2*` namespaces and removes them (and their wireguard-go processes) at the end."""

    def __init__(self, tmp: Path, backend_name: str = "userspace") -> None:
        self.tmp = tmp
        self.backend_name = backend_name
        self.names: list[str] = []
        self.backends: list[Backend] = []

    def add(self, name: str) -> str:
        assert name.startswith(PREFIX)
        delete_netns(name)  # a leftover of a crashed run
        run("ip", "netns", "add", name)
        self.names.append(name)
        in_ns(name, "ip", "link", "set", "lo", "up")
        return name

    def backend(self, ns: str) -> UserspaceBackend:
        """A userspace backend for `ns` (the process-model tests need wireguard-go itself)."""
        run_dir = self.tmp / ns
        run_dir.mkdir(mode=0o700, exist_ok=True)
        backend = UserspaceBackend(netns=ns, run_dir=run_dir)
        self.backends.append(backend)
        return backend

    def wg_backend(self, ns: str) -> Backend:
        """A new backend object of the tier's kind for `ns`; a second one for the same namespace
        attaches to what the first created, as a restarted agent does."""
        if self.backend_name == "userspace":
            return self.backend(ns)
        backend = KernelBackend(netns=ns)
        self.backends.append(backend)
        return backend

    def veth(self, a: str, a_if: str, a_addr: str, b: str, b_if: str, b_addr: str) -> None:
        run("ip", "link", "add", a_if, "netns", a, "type", "veth", "peer", b_if, "netns", b)
        for ns, dev, addr in ((a, a_if, a_addr), (b, b_if, b_addr)):
            run("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")

    def close(self) -> None:
        for backend in self.backends:
            with contextlib.suppress(Exception):
                backend.delete(WG_IF)
        for name in self.names:
            delete_netns(name)
