"""A real 3-host mesh: every pair pings over the tunnel, a 4th host joins, a cut link is routed around
through a relay and back, and a node removed by an admin disappears from every peer and reaches nobody.

The tests share one lab and run in file order (each leaves the lab as the next one expects); the lab's
backend is the `wg_backend` parameter. Those marked `kernel_tier` run again on the kernel backend in the
tests/kernel VM, without the 4th host (the removal takes the newest host, whichever it is)."""

from __future__ import annotations

import time

import pytest

from lab.controller_admin import node_id
from lab.instance import Lab
from lab.observe import ping_once
from tests.e2e.harness import both_ways, logs, reachable, run_cli, running_lab, wait_all_reach
from tests.support import wait_until

pytestmark = [pytest.mark.root, pytest.mark.scenario]
NAME = "e2em"


@pytest.fixture(scope="module")
def lab(wg_backend: str):
    with running_lab(NAME, 3, timeout=300 if wg_backend == "kernel" else 120, backend=wg_backend) as lab:
        yield lab


@pytest.mark.kernel_tier
def test_every_pair_pings_over_the_tunnel(lab: Lab):
    code, out, err = run_cli("ping", "--name", NAME)
    assert code == 0, f"{out}\n{err}\n{logs(lab)}"
    assert "FAIL" not in out and "all 6 pairs answer" in out
    shown = lab.exec("h1", ["wg", "show", "wg0", "peers"])
    assert shown.returncode == 0, shown.stderr
    assert len(shown.stdout.split()) == 2


def test_lab_status_shows_every_host_running_and_connected(lab: Lab):
    code, out, _ = run_cli("status", "--name", NAME)
    assert code == 0
    for name in ("h1", "h2", "h3"):
        row = next(line for line in out.splitlines() if line.startswith(f"{name} "))
        assert "running" in row and " up " in row and "2/2" in row, row
    assert "controller https://198.18.0.1:8420: pid" in out and "healthy" in out


def test_a_fourth_host_joins_and_every_host_reaches_it(lab: Lab, record_property):
    old = ["h1", "h2", "h3"]
    started = time.monotonic()
    new = lab.add_host().name
    assert new == "h4"
    wait_until("h4 to enroll", lambda: lab.enrolled("h4"), 30, interval=0.05, show=lambda: logs(lab))
    enrolled = time.monotonic()
    wait_all_reach(lab, both_ways(new, old), 60, "h4 and every host to ping each other")
    reached = time.monotonic()
    record_property("join_enrolled_s", round(enrolled - started, 2))
    record_property("join_enrollment_to_reachable_s", round(reached - enrolled, 2))
    print(f"h4: enrolled {enrolled - started:.2f} s after start, reachable {reached - enrolled:.2f} s later")


def wait_for_route(lab: Lab, route: str, what: str) -> None:
    """Wait until h1's agent routes to h2 `route` ("relay" or "direct") and h2 answers h1."""

    def routed() -> bool:
        status = lab.agent_status("h1")
        peer = status.peer("h2") if status else None
        return peer is not None and peer.route == route and reachable(lab, "h1", "h2")

    wait_until(what, routed, 240, interval=0.5, show=lambda: run_cli("status", "--name", NAME)[1])


@pytest.mark.kernel_tier
def test_a_cut_link_is_routed_around_through_a_relay_and_back(lab: Lab):
    assert reachable(lab, "h1", "h2")
    lab.cut("h1", "h2")
    try:
        assert ping_once(lab.host("h1").namespace, lab.host("h2").underlay_address, 0.5, 1) is None
        wait_for_route(lab, "relay", "h1 to reach h2 through a relay")
        via = lab.agent_status("h1").peer("h2").via  # type: ignore[union-attr]
        assert via in ("h3", "h4")
        assert reachable(lab, "h2", "h1")
    finally:
        lab.heal("h1", "h2")
    wait_for_route(lab, "direct", "h1 to reach h2 directly again after the heal")


@pytest.mark.kernel_tier
def test_an_admin_removes_a_node_and_it_reaches_nobody(lab: Lab):
    *others, newest = [h.name for h in lab.hosts]
    gone = lab.observe([newest]).hosts[0].device
    assert gone is not None and gone.public_key is not None
    nid = node_id(lab, newest)
    lab.run_in_underlay(lab.admin_argv("nodes", "remove", str(nid)))

    def forgotten() -> bool:
        return all(
            h.device is not None and gone.public_key not in h.device.peers for h in lab.observe(others).hosts
        )

    wait_until(f"{newest} to disappear from every peer's interface", forgotten, 180, show=lambda: logs(lab))
    for other in others:
        assert not reachable(lab, newest, other), f"{newest} still reaches {other}"
        assert not reachable(lab, other, newest), f"{other} still reaches {newest}"
    names = run_cli("ping", "--name", NAME)
    assert names[0] == 1  # the removed node is still a lab host, but no longer in the mesh
