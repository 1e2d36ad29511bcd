"""Names, addresses and paths of one lab, derived from its name alone. Pure; no I/O.

Rules:
- Every namespace a lab creates is called `wgl-<lab>-<role>`, so `wgmesh lab down` can find all of a
  lab's namespaces by prefix even when its record is lost.
- Interfaces live only inside the lab's namespaces (veth pairs are created directly there), so their
  names cannot collide with anything on the machine; they still start with `wgl` and stay within the
  15 characters Linux allows.
- Every address is in 198.18.0.0/15 (RFC 2544 benchmarking range): the underlay is 198.18.0.0/16 with
  the bridge (and the controller) on 198.18.0.1 and host N on 198.18.1.N; the mesh is 198.19.0.0/16.
- A lab on PostgreSQL runs its controller replicas c1..cN each in a namespace of its own on
  198.18.0.(10+N) (so one can be cut from the database alone), and PostgreSQL in the underlay on
  198.18.0.2:5432 (an address of its own, so a cut leaves the underlay's admin traffic alone). Replica c1 keeps the single controller's state directory and log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

NAMESPACE_PREFIX = "wgl-"
LABS_ROOT = Path("/run/wgmesh-lab")
UNDERLAY_NET = IPv4Network("198.18.0.0/16")
MESH_CIDR = IPv4Network("198.19.0.0/16")
BRIDGE_ADDRESS = IPv4Address("198.18.0.1")
CONTROLLER_PORT = 8420
# Metrics listeners (no credential) on the loopback of the namespace each process runs in: the
# controller's in the underlay, every agent's in its own host (each namespace has its own loopback).
CONTROLLER_METRICS_LISTEN = "127.0.0.1:9585"
AGENT_METRICS_LISTEN = "127.0.0.1:9586"
WG_INTERFACE = "wg0"
WG_LISTEN_PORT = 51820
MAX_HOSTS = 250  # host N is 198.18.1.N
BRIDGE_IFNAME = "wgl-br"
HOST_UPLINK_IFNAME = "wgl-eth0"  # the host's end of its veth, inside the host namespace
IFNAME_MAX = 15

MAX_REPLICAS = 3
REPLICA_ADDRESS_BASE = 10  # replica N on 198.18.0.(10+N)
POSTGRES_ADDRESS = IPv4Address("198.18.0.2")  # a second address of the bridge: cut alone
POSTGRES_PORT = 5432

_NAME = re.compile(r"^[a-z][a-z0-9]{0,7}$")
_HOST = re.compile(r"^h([1-9][0-9]{0,2})$")
_REPLICA = re.compile(r"^c([1-9])$")


class LayoutError(ValueError):
    """A lab or host name that cannot be used; the message says which names are allowed."""


def check_lab_name(name: str) -> str:
    if not _NAME.match(name):
        raise LayoutError(
            f"lab name {name!r} is not allowed: use 1-8 characters, lowercase letters and digits, "
            "starting with a letter (it becomes part of namespace names)"
        )
    return name


def host_index(host: str) -> int:
    """`h3` -> 3; anything else is a LayoutError."""
    m = _HOST.match(host)
    if not m or int(m.group(1)) > MAX_HOSTS:
        raise LayoutError(f"host name {host!r} is not valid: hosts are h1 .. h{MAX_HOSTS}")
    return int(m.group(1))


def replica_index(name: str) -> int | None:
    """`c2` -> 2; None for anything that is not a replica name."""
    m = _REPLICA.match(name)
    return int(m.group(1)) if m else None


def host_name(index: int) -> str:
    if not 1 <= index <= MAX_HOSTS:
        raise LayoutError(f"a lab has at most {MAX_HOSTS} hosts (asked for host {index})")
    return f"h{index}"


@dataclass(frozen=True)
class HostLayout:
    index: int
    name: str  # h1, h2, ... also the hostname the agent enrolls with
    namespace: str
    underlay_address: IPv4Address
    bridge_port_ifname: str  # the underlay's end of the host's veth, on the bridge
    dir: Path
    state_dir: Path  # the agent's --state-dir
    run_dir: Path  # bind-mounted on /run/wireguard for every process of the host
    agent_log: Path

    @property
    def endpoint(self) -> str:
        return f"{self.underlay_address}:{WG_LISTEN_PORT}"


@dataclass(frozen=True)
class ReplicaLayout:
    """One controller process of the lab: the single controller (in the underlay, on the bridge
    address), or replica cN of a lab on PostgreSQL (in a namespace of its own)."""

    index: int
    name: str  # c1, c2, ...
    namespace: str | None  # None: the underlay's
    address: IPv4Address
    bridge_port_ifname: str
    state_dir: Path
    log: Path

    @property
    def listen(self) -> str:
        return f"{self.address}:{CONTROLLER_PORT}"

    @property
    def url(self) -> str:
        return f"https://{self.listen}"


@dataclass(frozen=True)
class LabLayout:
    name: str
    root: Path = LABS_ROOT

    def __post_init__(self) -> None:
        check_lab_name(self.name)

    @property
    def namespace_prefix(self) -> str:
        return f"{NAMESPACE_PREFIX}{self.name}-"

    @property
    def underlay_namespace(self) -> str:
        return f"{self.namespace_prefix}u"

    @property
    def dir(self) -> Path:
        return self.root / self.name

    @property
    def record_path(self) -> Path:
        return self.dir / "lab.json"

    @property
    def controller_dir(self) -> Path:
        return self.dir / "controller"

    @property
    def controller_log(self) -> Path:
        return self.dir / "controller.log"

    @property
    def admin_credential_path(self) -> Path:
        return self.controller_dir / "admin-credential"

    @property
    def preauth_key_path(self) -> Path:
        """The pre-auth key every agent of the lab enrolls with (0600), handed over as --token-file."""
        return self.dir / "preauth-key"

    @property
    def controller_listen(self) -> str:
        return f"{BRIDGE_ADDRESS}:{CONTROLLER_PORT}"

    @property
    def controller_url(self) -> str:
        return f"https://{self.controller_listen}"

    @property
    def controller_ca_path(self) -> Path:
        """The CA the controller made on first start; agents pin it through the pre-auth key."""
        return self.controller_dir / "tls" / "ca.crt"

    @property
    def database_config_path(self) -> Path:
        """The controllers' TOML settings naming the database URL (with its password): 0600, and
        passed as --config so the password never shows in a command line or a log."""
        return self.dir / "controller-db.toml"

    def replica(self, index: int, own_namespace: bool) -> ReplicaLayout:
        """Controller `index` (1 .. MAX_REPLICAS); `own_namespace`: a lab on PostgreSQL."""
        if not 1 <= index <= MAX_REPLICAS:
            raise LayoutError(f"a lab has 1 to {MAX_REPLICAS} controller replicas (asked for c{index})")
        name = f"c{index}"
        first = index == 1
        return ReplicaLayout(
            index=index,
            name=name,
            namespace=f"{self.namespace_prefix}{name}" if own_namespace else None,
            address=UNDERLAY_NET.network_address + REPLICA_ADDRESS_BASE + index
            if own_namespace
            else BRIDGE_ADDRESS,
            bridge_port_ifname=f"wgl-{name}",
            state_dir=self.controller_dir if first else self.dir / f"controller-{name}",
            log=self.controller_log if first else self.dir / f"controller-{name}.log",
        )

    def host(self, index: int) -> HostLayout:
        name = host_name(index)
        hdir = self.dir / "hosts" / name
        port_ifname = f"wgl-{name}"
        assert len(port_ifname) <= IFNAME_MAX
        return HostLayout(
            index=index,
            name=name,
            namespace=f"{self.namespace_prefix}{name}",
            underlay_address=UNDERLAY_NET.network_address + 256 + index,
            bridge_port_ifname=port_ifname,
            dir=hdir,
            state_dir=hdir / "state",
            run_dir=hdir / "run",
            agent_log=hdir / "agent.log",
        )

    def owns_namespace(self, namespace: str) -> bool:
        return namespace.startswith(self.namespace_prefix)
