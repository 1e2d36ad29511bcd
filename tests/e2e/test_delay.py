"""`lab delay`: latency added in userspace between two hosts, and the weighted topology at work: a slow
direct link is routed around through a faster two-hop relay and stays there without flapping; `heal`
removes every rule and relay."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from lab.controller_admin import read_topology
from lab.instance import Lab
from lab.observe import ping_once
from tests.e2e.harness import reachable, run_cli, running_lab
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


def test_a_slow_direct_link_goes_through_a_relay_without_flapping(lab: Lab):
    assert _route(lab, "h1", "h2") == "direct"
    started = time.monotonic()
    lab.delay("h1", "h2", 80.0)
    try:
        # the underlay itself is untouched: only the pair's WireGuard packets are held
        underlay = ping_once(lab.host("h1").namespace, lab.host("h2").underlay_address, 1.0, 1)
        assert underlay is not None and underlay < 40
        wait_until(
            "h1 to reach h2 through h3",
            lambda: _route(lab, "h1", "h2") == "via h3" and _route(lab, "h2", "h1") == "via h3",
            60,
            interval=0.5,
            show=lambda: run_cli("status", "--name", NAME)[1],
        )
        rerouted = time.monotonic() - started
        rtt = _link_rtt(lab, "h1", "h2")
        # smoothed, and no longer probed once relayed: well above the other links, not always all 80 ms
        assert rtt is not None and rtt >= 20, f"the controller measured the direct link at {rtt} ms"
        assert reachable(lab, "h1", "h2") and reachable(lab, "h2", "h1")
        code, out, _ = run_cli("status", "--name", NAME, "--json")
        shown = json.loads(out)
        assert code == 0 and shown["delays"] == [{"a": "h1", "b": "h2", "delay_ms": 80.0, "loss": 0.0}]
        h1 = next(h for h in shown["hosts"] if h["host"] == "h1")
        assert h1["relayed"] == "h2 via h3" and h1["wg0"] == "up"
        code, out, _ = run_cli("status", "--name", NAME)
        assert re.search(r"^h1 <-> h2 +\+80 ms +0%$", out, re.M), out
        # stable: for 15 s of probes and reports, the route stays on the relay
        watch_until = time.monotonic() + 15
        while time.monotonic() < watch_until:
            assert _route(lab, "h1", "h2") == "via h3", run_cli("status", "--name", NAME)[1]
            time.sleep(0.5)
        print(f"rerouted through h3 {rerouted:.1f} s after the delay was added")
    finally:
        lab.heal("h1", "h2")
    assert lab.impairments() == []
    assert lab.firewall_rules("h1") == [] and lab.firewall_rules("h2") == []
