"""Host networking through netlink, on a veth end inside a `wgt2` namespace, driven from outside (as the
tests and the lab do) and from inside (as the daemon does): idempotent, removes only what it owns,
forwarding switched in the right namespace, a missing namespace is an error and is not created."""

from __future__ import annotations

import json
import subprocess
import sys
from ipaddress import ip_interface, ip_network
from pathlib import Path

import pytest

from agent.hostnet.base import HostConfig
from agent.hostnet.netlink import (
    HostNetworkError,
    NetlinkHostNetwork,
    configure_interface,
    read_forwarding,
    read_interface,
    set_forwarding,
)
from tests.netns.harness import Namespaces, in_ns, run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def veth_ns(namespaces: Namespaces) -> str:
    ns = namespaces.add("wgt2h1")
    run("ip", "-n", ns, "link", "add", "wgt2hd", "type", "veth", "peer", "name", "wgt2he")
    return ns


def ip_json(ns: str, *argv: str) -> list[dict[str, object]]:
    return list(json.loads(in_ns(ns, "ip", "-j", *argv).stdout or "[]"))


def test_configure_is_declarative_and_idempotent(veth_ns: str) -> None:
    ns = veth_ns
    changes = configure_interface(
        "wgt2hd", ["198.19.9.1/24", "fd09::1/64"], ["198.19.10.0/24", "fd10::/64"], netns=ns
    )
    assert changes == [
        "wgt2hd: MTU 1500 → 1420",
        "wgt2hd: address 198.19.9.1/24 added",
        "wgt2hd: address fd09::1/64 added",
        "wgt2hd: link up",
        "wgt2hd: route 198.19.10.0/24 added",
        "wgt2hd: route fd10::/64 added",
    ]
    assert (
        configure_interface(
            "wgt2hd", ["fd09::1/64", "198.19.9.1/24"], ["fd10::/64", "198.19.10.0/24"], netns=ns
        )
        == []
    )
    state = read_interface("wgt2hd", netns=ns)
    assert state.mtu == 1420 and state.up
    assert state.addresses == (ip_interface("198.19.9.1/24"), ip_interface("fd09::1/64"))
    assert state.routes == (ip_network("198.19.10.0/24"), ip_network("fd10::/64"))
    # what `ip` shows agrees
    routes = {r["dst"] for r in ip_json(ns, "route", "show", "dev", "wgt2hd", "proto", "87")}
    assert routes == {"198.19.10.0/24"}


def test_stale_addresses_and_routes_go_but_foreign_routes_stay(veth_ns: str) -> None:
    ns = veth_ns
    configure_interface("wgt2hd", ["198.19.9.1/24"], ["198.19.10.0/24", "198.19.11.0/24"], netns=ns)
    in_ns(ns, "ip", "route", "add", "198.19.12.0/24", "dev", "wgt2hd")  # an operator's static route
    changes = configure_interface("wgt2hd", ["198.19.9.1/24"], ["198.19.11.0/24"], mtu=1380, netns=ns)
    assert changes == ["wgt2hd: MTU 1420 → 1380", "wgt2hd: route 198.19.10.0/24 removed"]
    dsts = {r["dst"] for r in ip_json(ns, "route", "show", "dev", "wgt2hd")}
    assert dsts == {"198.19.9.0/24", "198.19.11.0/24", "198.19.12.0/24"}

    changes = configure_interface("wgt2hd", ["198.19.9.2/24"], ["198.19.11.0/24"], mtu=1380, netns=ns)
    assert changes[:2] == ["wgt2hd: address 198.19.9.1/24 removed", "wgt2hd: address 198.19.9.2/24 added"]
    assert read_interface("wgt2hd", netns=ns).addresses == (ip_interface("198.19.9.2/24"),)


def test_forwarding_is_switched_in_that_namespace_only(veth_ns: str) -> None:
    ns = veth_ns
    host_before = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    assert read_forwarding("wgt2hd", netns=ns) is False
    assert set_forwarding("wgt2hd", True, netns=ns) == [
        "wgt2hd: ipv4 forwarding on",
        "wgt2hd: ipv6 forwarding on",
    ]
    assert set_forwarding("wgt2hd", True, netns=ns) == []
    assert in_ns(ns, "cat", "/proc/sys/net/ipv4/conf/wgt2hd/forwarding").stdout.strip() == "1"
    assert in_ns(ns, "cat", "/proc/sys/net/ipv4/conf/wgt2he/forwarding").stdout.strip() == "0"
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == host_before
    assert set_forwarding("wgt2hd", False, netns=ns) == [
        "wgt2hd: ipv4 forwarding off",
        "wgt2hd: ipv6 forwarding off",
    ]
    assert read_forwarding("wgt2hd", netns=ns) is False


def test_errors_name_what_is_missing_and_create_nothing(veth_ns: str) -> None:
    with pytest.raises(HostNetworkError, match="interface wgt2nope in namespace wgt2h1 does not exist"):
        configure_interface("wgt2nope", ["198.19.9.1/24"], netns=veth_ns)
    with pytest.raises(HostNetworkError, match="network namespace wgt2-missing does not exist"):
        configure_interface("wgt2hd", ["198.19.9.1/24"], netns="wgt2-missing")
    assert not Path("/run/netns/wgt2-missing").exists()
    with pytest.raises(HostNetworkError, match="MTU 20"):
        configure_interface("wgt2hd", [], mtu=20, netns=veth_ns)


def test_from_inside_the_namespace_as_the_daemon_runs(veth_ns: str) -> None:
    """netns=None inside `ip netns exec`, through the HostNetwork the daemon uses."""
    script = (
        "import ipaddress\n"
        "from agent.hostnet.base import HostConfig\n"
        "from agent.hostnet.netlink import NetlinkHostNetwork\n"
        "net = NetlinkHostNetwork()\n"
        "net.up('wgt2hd')\n"
        "config = HostConfig((ipaddress.ip_interface('198.19.9.1/32'),), (ipaddress.ip_network('198.19.9.2/32'),), True)\n"
        "print(net.set(config))\n"
        "print(net.set(config))\n"
    )
    result = subprocess.run(
        ["ip", "netns", "exec", veth_ns, sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    first, second = result.stdout.splitlines()
    assert "wgt2hd: route 198.19.9.2/32 added" in first and "wgt2hd: ipv4 forwarding on" in first
    assert second == "[]"
    assert read_interface("wgt2hd", netns=veth_ns).routes == (ip_network("198.19.9.2/32"),)


def test_the_host_network_from_outside(veth_ns: str) -> None:
    net = NetlinkHostNetwork(netns=veth_ns, mtu=1400)
    net.up("wgt2hd")
    config = HostConfig((ip_interface("198.19.9.1/32"),), (ip_network("198.19.9.2/32"),), False)
    first = net.set(config)
    assert "wgt2hd: MTU 1500 → 1400" in first
    assert net.set(config) == []
    net.close()
