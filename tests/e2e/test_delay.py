"""`lab delay`: latency added in userspace between two hosts, and the weighted topology at work: a slow
direct link is routed around through a faster two-hop relay and stays there without flapping; `heal`
removes every rule and relay, and the pair goes back to direct, once. A few seconds of partial loss
(issue 8.6) likewise leave the pair direct again: relayed pairs keep measuring their direct path."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from agent.desired import probe_address
from lab.controller_admin import read_nodes, read_topology
from lab.instance import Lab
from lab.observe import ping_once
from tests.e2e.harness import logs, reachable, run_cli, running_lab
from tests.support import wait_until

pytestmark = [pytest.mark.root, pytest.mark.scenario]
NAME = "e2edelay"


@pytest.fixture(scope="module")
def lab():
    with running_lab(NAME, 3) as lab:
        yield lab


def _route(lab: Lab, source: str, target: str) -> str | None:
    status = lab.agent_status(source)
    peer = status.peer(target) if status else None
    if peer is None:
        return None
    return f"via {peer.via}" if peer.route == "relay" else peer.route


def _link_rtt(lab: Lab, a: str, b: str) -> float | None:
    names = {n.node_id: n.name for n in read_topology(lab).nodes}
    for edge in read_topology(lab).edges:
        if {names.get(edge.a), names.get(edge.b)} == {a, b}:
            return edge.rtt_ms
    return None


def test_bad_values_get_one_line_and_change_nothing(lab: Lab):
    for args, message in [
        (["h1", "h9", "80ms"], "lab 'e2edelay' has no host 'h9'"),
        (["h1", "h2", "-5ms"], "delay '-5ms': must not be negative"),
        (["h1", "h2", "80ms", "--loss", "150%"], "loss '150%': at most 100%"),
        (["h1", "h1", "80ms"], "h1 and h1 are the same host"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "wgmesh", "lab", "delay", "--name", NAME, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        code, out, err = done.returncode, done.stdout, done.stderr
        assert code != 0 and out == ""
        assert len(err.strip().splitlines()) == 1 and message in err, err
    assert lab.impairments() == []


def test_a_slow_direct_link_goes_through_a_relay_and_back_when_it_heals_without_flapping(lab: Lab):
    assert _route(lab, "h1", "h2") == "direct"
    started = time.monotonic()
    lab.delay("h1", "h2", 80.0)
    try:
        # the underlay itself is untouched: only the pair's WireGuard packets are held
        underlay = ping_once(lab.host("h1").namespace, lab.host("h2").underlay_address, 1.0, 1)
        assert underlay is not None and underlay < 40
        _wait_for_route(lab, "via h3", 60)
        rerouted = time.monotonic() - started
        # the agents keep probing the direct path while relayed: the controller sees the 80 ms link
        wait_until(
            "the controller to measure the direct link at the 80 ms it takes",
            lambda: (rtt := _link_rtt(lab, "h1", "h2")) is not None and rtt >= 60,
            30,
            interval=0.5,
            show=lambda: f"h1-h2 measured at {_link_rtt(lab, 'h1', 'h2')} ms",
        )
        assert reachable(lab, "h1", "h2") and reachable(lab, "h2", "h1")
        code, out, _ = run_cli("status", "--name", NAME, "--json")
        shown = json.loads(out)
        assert code == 0 and shown["delays"] == [{"a": "h1", "b": "h2", "delay_ms": 80.0, "loss": 0.0}]
        h1 = next(h for h in shown["hosts"] if h["host"] == "h1")
        assert h1["relayed"] == "h2 via h3" and h1["wg0"] == "up"
        code, out, _ = run_cli("status", "--name", NAME)
        assert re.search(r"^h1 <-> h2 +\+80 ms +0%$", out, re.M), out
        # stable: for 15 s of probes and reports, the route stays on the relay
        _watch_route(lab, "via h3", 15)

        logs_at = _log_ends(lab)
        healed_at = time.monotonic()
        lab.heal("h1", "h2")
        assert lab.impairments() == []
        _wait_for_route(lab, "direct", 60)
        back = time.monotonic() - healed_at
        _watch_route(lab, "direct", 15)
        _changed_once(lab, logs_at)
        # the first end to see the healed link is a round ahead of the other, not lying
        assert {n.name: n.implausible_link_reports for n in read_nodes(lab)} == {"h1": 0, "h2": 0, "h3": 0}
        print(f"rerouted through h3 {rerouted:.1f} s after the delay was added, back {back:.1f} s after heal")
    finally:
        lab.heal("h1", "h2")
    assert lab.impairments() == []
    assert lab.firewall_rules("h1") == [] and lab.firewall_rules("h2") == []


def test_a_few_seconds_of_partial_loss_leave_the_pair_direct_again(lab: Lab):
    """Issue 8.6: a third of h1's echo requests (its probes, over either path) dropped on h2's wg0 until
    the pair is relayed, then no more loss: the pair goes back to direct and stays there."""
    assert _route(lab, "h1", "h2") == "direct"
    _drop_a_share_of_echo_requests(lab, "h2", "h1", 3)
    try:
        _wait_for_route(lab, "via h3", 60)
        logs_at = _log_ends(lab)
    finally:
        _stop_dropping(lab, "h2")
    _wait_for_route(lab, "direct", 90)
    _watch_route(lab, "direct", 15)
    _changed_once(lab, logs_at)


def _wait_for_route(lab: Lab, route: str, timeout: float) -> None:
    """Until h1 routes to h2, and h2 to h1, the way `route` says ("direct", "via h3")."""
    wait_until(
        f"h1 and h2 to reach each other {route}",
        lambda: _route(lab, "h1", "h2") == route and _route(lab, "h2", "h1") == route,
        timeout,
        interval=0.5,
        show=lambda: _what_is_seen(lab),
    )


def _what_is_seen(lab: Lab) -> str:
    """The lab's status, the controller's view of the h1-h2 link, and the agents' last lines."""
    link = next((e for e in _edges(lab) if e[0] == {"h1", "h2"}), None)
    return f"{run_cli('status', '--name', NAME)[1]}\ncontroller's h1-h2 link: {link}\n{logs(lab, 8)}"


def _edges(lab: Lab) -> list[tuple[set[str | None], float, float | None, float | None]]:
    names = {n.node_id: n.name for n in read_topology(lab).nodes}
    return [({names.get(e.a), names.get(e.b)}, e.weight, e.rtt_ms, e.loss) for e in read_topology(lab).edges]


def _watch_route(lab: Lab, route: str, seconds: float) -> None:
    """For `seconds` of probes and reports, both ends keep routing to each other `route`."""
    watch_until = time.monotonic() + seconds
    while time.monotonic() < watch_until:
        seen = (_route(lab, "h1", "h2"), _route(lab, "h2", "h1"))
        assert seen == (route, route), f"{seen}\n{_what_is_seen(lab)}"
        time.sleep(0.5)


def _log_ends(lab: Lab) -> dict[str, int]:
    return {h: lab.host(h).agent_log.stat().st_size for h in ("h1", "h2")}


def _route_changes(lab: Lab, since: dict[str, int]) -> dict[str, list[str]]:
    """The lines where h1's agent moved h2's addresses between peers (a route change), and h2's h1's,
    in their logs after `since` (byte offsets)."""
    changes = {}
    for host, other in (("h1", "h2"), ("h2", "h1")):
        with lab.host(host).agent_log.open("rb") as f:
            f.seek(since[host])
            text = f.read().decode(errors="replace")
        changes[host] = [
            line
            for line in text.splitlines()
            if f"event=peer_changed peer={other} " in line and "allowed_ips" in line
        ]
    return changes


def _changed_once(lab: Lab, since: dict[str, int]) -> None:
    changes = _route_changes(lab, since)
    assert {h: len(lines) for h, lines in changes.items()} == {"h1": 1, "h2": 1}, (
        "the route between h1 and h2 flapped:\n" + "\n".join(line for v in changes.values() for line in v)
    )


LOSSY_TABLE = "e2edelay_loss"


def _drop_a_share_of_echo_requests(lab: Lab, host: str, source: str, one_in: int) -> None:
    """On `host`'s wg0, drop one in `one_in` echo requests from `source`'s tunnel and probe addresses."""
    status = lab.agent_status(source)
    assert status is not None
    probe = probe_address(status.mesh_cidr, status.tunnel_address)
    rules = [
        f"iifname wg0 ip saddr {status.tunnel_address} icmp type echo-request numgen random mod {one_in} == 0 drop",
        f"iifname wg0 ip6 saddr {probe} icmpv6 type echo-request numgen random mod {one_in} == 0 drop",
    ]
    ruleset = "\n".join(
        [
            f"table inet {LOSSY_TABLE} {{",
            "  chain input { type filter hook input priority -10; policy accept;",
            *(f"    {r}" for r in rules),
            "  }",
            "}",
        ]
    )
    done = subprocess.run(
        lab.exec_argv(host, ["nft", "-f", "-"]), input=ruleset, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr


def _stop_dropping(lab: Lab, host: str) -> None:
    done = lab.exec(host, ["nft", "delete", "table", "inet", LOSSY_TABLE])
    assert done.returncode == 0, done.stderr
