"""The live topology page in a real browser (Debian's headless Chromium, driven by Playwright) against a
real lab: the one-time link from `wgmesh controller ui-url` logs in, the page shows the lab's hosts and
their links, and `lab cut` turns the link red and shows the relayed route within 3 s of the
controller deciding it. Screenshots are saved in the test's temporary directory. `lab metrics` shows
the same mesh as numbers."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from lab.controller_admin import read_topology
from lab.instance import Lab
from tests.e2e.harness import run_cli, running_lab, wait_until

pytestmark = pytest.mark.root
NAME = "e2eui"
CHROMIUM = Path("/usr/bin/chromium")
# As root, and with no network beyond this machine: no sandbox (root), no GPU, and none of the
# background connections Chromium would try (refused here, many at a time).
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RED = "rgb(214, 39, 40)"  # --down in topology.css
SHOWN_WITHIN_MS = 3000
DIRECT_WITHIN_S = 180
DOWN_WITHIN_S = 240  # from the controller deciding the reroute to the page showing it


def browser_missing() -> str | None:
    if not CHROMIUM.exists():
        return "needs Debian's chromium (/usr/bin/chromium): `make test` installs it as root"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "needs Playwright for Python (the test extra: pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def lab():
    with running_lab(NAME, 3) as lab:
        yield lab


def in_underlay(tmp_path: Path, lab: Lab) -> Path:
    """A Chromium that runs in the lab's underlay namespace, where the controller listens."""
    wrapper = tmp_path / "chromium-in-underlay"
    ip = shutil.which("ip", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    wrapper.write_text(f'#!/bin/sh\nexec {ip} netns exec {lab.layout.underlay_namespace} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def link_is_down(lab: Lab, a: str, b: str) -> bool:
    topo = read_topology(lab)
    names = {n.node_id: n.name for n in topo.nodes}
    return not any({names[e.a], names[e.b]} == {a, b} for e in topo.edges)


ALL_DIRECT = (
    "() => document.querySelectorAll('line[data-link]').length === 3"
    " && document.querySelectorAll('line[data-health=\"down\"]').length === 0"
    " && document.querySelectorAll('#relayed li[data-route]').length === 0"
)
SHOWS_CUT = (
    "() => {"
    " const link = document.querySelector('line[data-link=\"h1-h2\"]');"
    " const route = document.querySelector('#relayed li[data-route=\"h1-h2\"]');"
    f" return link !== null && getComputedStyle(link).stroke === '{RED}'"
    " && route !== null && route.textContent.includes('via h3'); }"
)


@pytest.mark.timeout(DIRECT_WITHIN_S + DOWN_WITHIN_S + 180)
def test_the_page_shows_the_hosts_and_a_cut_link_turns_red_with_its_relayed_route(lab: Lab, tmp_path: Path):
    missing = browser_missing()
    if missing:
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    url = lab.run_in_underlay(lab.admin_argv("controller", "ui-url")).strip()
    assert url.startswith(f"{lab.layout.controller_url}/ui/login?ticket="), url
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh profile
            executable_path=str(in_underlay(tmp_path, lab)),
            headless=True,
            args=FLAGS,
            ignore_https_errors=True,  # the lab controller's own CA
            viewport={"width": 1200, "height": 900},
        )
        try:
            page = browser.new_page()
            page.goto(url)
            assert page.url == f"{lab.layout.controller_url}/ui/"
            page.wait_for_selector('[data-node="h3"]', timeout=15_000)
            hosts = page.locator("[data-node]").evaluate_all("els => els.map(e => e.dataset.node)")
            assert sorted(hosts) == ["h1", "h2", "h3"]
            # A fresh mesh may still carry a link its agents saw down while their tunnels came up: it
            # comes back with a handshake newer than that, which WireGuard makes every 2 minutes. Wait
            # for three links up and every pair direct.
            wait_until(
                "the page to show three links up and every pair direct",
                lambda: page.evaluate(ALL_DIRECT),
                DIRECT_WITHIN_S,
                interval=0.5,
                show=lambda: (
                    f"page: {page.locator('#links').inner_text()}\ncontroller: {read_topology(lab).edges}"
                ),
            )
            assert page.locator("#live").inner_text().startswith("live")
            stroke = page.locator('line[data-link="h1-h2"]').evaluate("e => getComputedStyle(e).stroke")
            assert stroke != RED
            assert page.locator("#relayed").inner_text().strip() == "none: every pair is direct"
            page.screenshot(path=str(tmp_path / "topology.png"))

            cut = time.monotonic()
            lab.cut("h1", "h2")
            try:
                # Usually the next probe round reports the loss (a few seconds). A cut in the middle of a
                # round reports partial loss: the link's weight rises, traffic moves to the relay, and
                # probes through the relay say nothing about the direct link; the controller then takes
                # it down once its handshake is stale (handshake_stale_s, 180 s, after the last one).
                wait_until(
                    "the controller to take the h1-h2 link down",
                    lambda: link_is_down(lab, "h1", "h2"),
                    DOWN_WITHIN_S,
                    show=lambda: (
                        f"controller: {read_topology(lab).edges}\n{run_cli('status', '--name', NAME)[1]}"
                    ),
                )
                decided = time.monotonic()
                page.wait_for_function(SHOWS_CUT, timeout=SHOWN_WITHIN_MS)
                shown = time.monotonic()
                shot = tmp_path / "topology-cut.png"
                page.screenshot(path=str(shot))
                print(
                    f"cut -> controller took the link down {decided - cut:.1f} s later, -> page red with the relayed route "
                    f"{shown - decided:.2f} s later; screenshot {shot}"
                )
                assert "h1 ↔ h2 via h3" in page.locator("#relayed").inner_text()
                assert page.locator('#links tr[data-link="h1-h2"] .health').inner_text() == "down"
                code, out, _ = run_cli("metrics", "--name", NAME, "--json")
                assert code == 0
                controller = {s["name"]: s["value"] for s in json.loads(out)["controller"]["samples"]}
                assert controller["wgmesh_nodes"] == 3 and controller["wgmesh_relayed_routes"] == 2
            finally:
                lab.heal("h1", "h2")
        finally:
            browser.close()


def test_lab_metrics_shows_the_controller_and_every_agent(lab: Lab):
    code, out, err = run_cli("metrics", "--name", NAME)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "controller (http://127.0.0.1:9585/metrics)"
    assert any(line.split() == ["nodes", "3"] for line in lines), out
    assert any(line.split() == ["enrollments", "3"] for line in lines), out
    agents = lines.index("agents")
    header = lines[agents + 1].split()
    assert header == ["host", "peer", "route", "endpoint", "handshake", "rtt", "loss", "received", "sent"]
    rows = [line.split()[:3] for line in lines[agents + 2 :]]
    pairs = {(r[0], r[1]) for r in rows}
    assert pairs == {(a, b) for a in ("h1", "h2", "h3") for b in ("h1", "h2", "h3") if a != b}

    def h1_samples() -> set[str]:
        code, out, _ = run_cli("metrics", "--name", NAME, "--json")
        return {s["name"] for s in json.loads(out)["hosts"]["h1"]["samples"]} if code == 0 else set()

    # An RTT exists once h1's probes measured its peers (the lab may have just come up).
    wait_until(
        "h1's agent to export an RTT", lambda: "wgmesh_peer_rtt_seconds" in h1_samples(), 60, interval=1.0
    )
    h1 = h1_samples()
    assert {
        "wgmesh_peer_last_handshake_seconds",
        "wgmesh_peer_receive_bytes_total",
        "wgmesh_peer_transmit_bytes_total",
        "wgmesh_peer_rtt_seconds",
        "wgmesh_peer_info",
    } <= h1
