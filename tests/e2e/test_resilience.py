"""The mesh without its control plane: agent restarts keep every session, a killed controller changes
nothing on the data plane and is caught up with when it returns, and an agent that starts while the
controller is down brings its host back from the cached map.

The tests share one lab and run in file order."""

from __future__ import annotations

import time

import pytest

from lab.instance import Lab
from tests.e2e.harness import (
    both_ways,
    logs,
    ping_counts,
    reachable,
    running_lab,
    start_pings,
    wait_all_reach,
)
from tests.support import wait_until

pytestmark = [pytest.mark.root, pytest.mark.scenario]
NAME = "e2er"


@pytest.fixture(scope="module")
def lab():
    with running_lab(NAME, 3) as lab:
        yield lab


def test_an_agent_restart_drops_no_session(lab: Lab):
    names = ["h1", "h2", "h3"]
    before = lab.observe(names)
    first_pid = lab.agent_state("h1").pid
    procs = start_pings(lab, [("h2", "h1"), ("h1", "h3")], seconds=6, interval=0.2)
    t0 = time.time()
    assert lab.stop_agent("h1")
    assert not lab.agent_state("h1").running
    assert lab.start_agent("h1")
    wait_until(
        "the restarted agent to report itself connected",
        lambda: (
            (s := lab.agent_status("h1")) and s.pid != first_pid and s.running and s.controller == "connected"
        ),
        30,
        show=lambda: logs(lab),
    )
    counts = ping_counts(procs)
    after = lab.observe(names)
    for peer in ("h2", "h3"):
        old, new = before.handshake_time("h1", peer), after.handshake_time("h1", peer)
        assert old is not None
        if t0 - old < 100:  # a session older than that may rekey on its own (every 120 s)
            assert new == old, f"h1's session with {peer} was re-established by the restart"
    for pair, (sent, received) in counts.items():
        assert received == sent, f"{pair}: {sent - received} of {sent} pings lost across the agent restart"


def test_a_killed_controller_changes_nothing_for_30_s_and_agents_catch_up(lab: Lab):
    pairs = [(a, b) for a in ("h1", "h2", "h3") for b in ("h1", "h2", "h3") if a != b]
    assert lab.stop_controller(kill=True)
    assert not lab.controller_healthy()
    counts = ping_counts(start_pings(lab, pairs, seconds=30, interval=1.0))
    for pair, (sent, received) in counts.items():
        assert sent >= 25 and received >= sent - 1, (
            f"{pair}: {received}/{sent} answered without the controller"
        )
    wait_until(
        "every agent to notice the controller is gone",
        lambda: all(
            (s := lab.agent_status(n)) and s.controller == "disconnected" for n in ("h1", "h2", "h3")
        ),
        60,
    )
    lab.start_controller()
    new = lab.add_host().name
    wait_all_reach(
        lab,
        both_ways(new, ["h1", "h2", "h3"]),
        90,
        f"{new}, joined after the restart, and every host to ping each other",
    )


def test_an_agent_started_while_the_controller_is_down_restores_its_host_from_cache(lab: Lab):
    assert lab.stop_controller(kill=True)
    assert lab.stop_agent("h1")
    lab.delete_interface("h1")  # as after a reboot: no wg0, no wireguard-go
    assert lab.observe(["h1"]).hosts[0].device is None
    assert not reachable(lab, "h1", "h2")
    assert lab.start_agent("h1")
    others = [h.name for h in lab.hosts if h.name != "h1"]
    wait_all_reach(lab, both_ways("h1", others), 60, "h1 and every host to ping each other again")
    status = lab.agent_status("h1")
    assert status is not None and status.netmap_source == "cache" and status.controller != "connected"
