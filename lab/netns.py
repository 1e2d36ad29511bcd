"""Network namespaces and links of a lab, through the `ip` command.

Rules:
- A veth pair is created with both ends directly inside lab namespaces (`ip link add ... netns A type
  veth peer ... netns B`), so nothing ever appears in the machine's own namespace, not even briefly.
- The underlay has no default route and nothing is NATed: hosts reach the bridge subnet only.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Address, ip_interface
from pathlib import Path

from lab.command import LabError, run
from lab.layout import BRIDGE_ADDRESS, BRIDGE_IFNAME, HOST_UPLINK_IFNAME, UNDERLAY_NET, HostLayout, LabLayout

NETNS_DIR = Path("/run/netns")


def list_namespaces() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def namespace_exists(namespace: str) -> bool:
    return (NETNS_DIR / namespace).exists()


def create_namespace(namespace: str) -> None:
    if namespace_exists(namespace):
        raise LabError(f"namespace {namespace} already exists (a lab with this name is up?)")
    run(["ip", "netns", "add", namespace])
    run(["ip", "-n", namespace, "link", "set", "lo", "up"])


def delete_namespace(namespace: str) -> None:
    if namespace_exists(namespace):
        run(["ip", "netns", "del", namespace])


def namespace_pids(namespace: str) -> list[int]:
    """Pids of the processes whose network namespace is `namespace` (none when it is gone)."""
    if not namespace_exists(namespace):
        return []
    done = run(["ip", "netns", "pids", namespace], check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def create_underlay(layout: LabLayout) -> None:
    ns = layout.underlay_namespace
    create_namespace(ns)
    run(["ip", "-n", ns, "link", "add", BRIDGE_IFNAME, "type", "bridge"])
    run(["ip", "-n", ns, "addr", "add", f"{BRIDGE_ADDRESS}/{UNDERLAY_NET.prefixlen}", "dev", BRIDGE_IFNAME])
    run(["ip", "-n", ns, "link", "set", BRIDGE_IFNAME, "up"])


def add_bridge_address(layout: LabLayout, address: IPv4Address) -> None:
    """One more address of the underlay on its bridge (a service of its own there)."""
    run(["ip", "-n", layout.underlay_namespace, "addr", "add", f"{address}/32", "dev", BRIDGE_IFNAME])


def create_host(layout: LabLayout, host: HostLayout) -> None:
    """The host's namespace, its veth to the underlay bridge and its underlay address."""
    create_attached(layout, host.namespace, host.bridge_port_ifname, host.underlay_address)


def create_attached(layout: LabLayout, namespace: str, port_ifname: str, address: IPv4Address) -> None:
    """A namespace on the underlay bridge (a host, a controller replica) with `address`."""
    create_namespace(namespace)
    u = layout.underlay_namespace
    run(
        [
            "ip", "link", "add", HOST_UPLINK_IFNAME, "netns", namespace, "type", "veth",
            "peer", "name", port_ifname, "netns", u,
        ]
    )  # fmt: skip
    run(["ip", "-n", u, "link", "set", port_ifname, "master", BRIDGE_IFNAME, "up"])
    run(
        [
            "ip",
            "-n",
            namespace,
            "addr",
            "add",
            f"{address}/{UNDERLAY_NET.prefixlen}",
            "dev",
            HOST_UPLINK_IFNAME,
        ]
    )
    run(["ip", "-n", namespace, "link", "set", HOST_UPLINK_IFNAME, "up"])


def interface_ipv4(namespace: str, ifname: str) -> IPv4Address | None:
    """The first IPv4 address on `ifname` inside `namespace`; None when the interface or address is missing."""
    if not namespace_exists(namespace):
        return None
    done = run(["ip", "-j", "-n", namespace, "-4", "addr", "show", "dev", ifname], check=False)
    if done.returncode != 0 or not done.stdout.strip():
        return None
    for link in json.loads(done.stdout):
        for addr in link.get("addr_info", []):
            if addr.get("family") == "inet":
                iface = ip_interface(f"{addr['local']}/{addr.get('prefixlen', 32)}")
                assert isinstance(iface.ip, IPv4Address)
                return iface.ip
    return None


def link_exists(namespace: str, ifname: str) -> bool:
    if not namespace_exists(namespace):
        return False
    return run(["ip", "-n", namespace, "link", "show", "dev", ifname], check=False).returncode == 0


def delete_link(namespace: str, ifname: str) -> None:
    if link_exists(namespace, ifname):
        run(["ip", "-n", namespace, "link", "del", "dev", ifname])
