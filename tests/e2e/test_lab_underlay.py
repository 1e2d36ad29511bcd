"""The lab's own machinery, without controller or agents: namespaces and underlay, per-host
/run/wireguard, cut/heal, and `lab down` removing everything, also after a crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab import netns, processes
from lab.instance import Lab
from lab.layout import LabLayout
from lab.teardown import tear_down
from tests.e2e.harness import run_cli
from tests.support import wait_until

pytestmark = [pytest.mark.root, pytest.mark.scenario]
NAME = "e2eu"


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {link["ifname"] for link in json.loads(out)}


@pytest.fixture(scope="module")
def underlay_lab():
    layout = LabLayout(NAME)
    tear_down(layout)
    before = root_links()
    try:
        lab = Lab.create(NAME, 3, mesh=False)
        assert root_links() == before, "building the lab changed the machine's own interfaces"
        yield lab
    finally:
        tear_down(layout)


def underlay_ping(lab: Lab, a: str, b: str) -> bool:
    from lab.observe import ping_once

    return ping_once(lab.host(a).namespace, lab.host(b).underlay_address, timeout_s=1, attempts=1) is not None


def test_hosts_reach_each_other_and_the_bridge_only(underlay_lab: Lab):
    assert underlay_ping(underlay_lab, "h1", "h2")
    assert underlay_ping(underlay_lab, "h3", "h1")
    routes = underlay_lab.exec("h1", ["ip", "-4", "route", "show"]).stdout
    assert "default" not in routes
    assert routes.split()[0] == "198.18.0.0/16"


def test_each_host_has_its_own_run_wireguard(underlay_lab: Lab):
    done = underlay_lab.exec(
        "h1", ["sh", "-c", "echo h1 > /run/wireguard/marker && cat /run/wireguard/marker"]
    )
    assert done.stdout.strip() == "h1"
    assert (underlay_lab.host("h1").run_dir / "marker").read_text().strip() == "h1"
    assert underlay_lab.exec("h2", ["ls", "/run/wireguard"]).stdout.strip() == ""


def test_cut_drops_the_underlay_between_two_hosts_only_and_heal_restores_it(underlay_lab: Lab):
    code, out, _ = run_cli("cut", "h1", "h2", "--name", NAME)
    assert code == 0 and "cut" in out
    try:
        assert not underlay_ping(underlay_lab, "h1", "h2")
        assert not underlay_ping(underlay_lab, "h2", "h1")
        assert underlay_ping(underlay_lab, "h1", "h3")
        assert underlay_ping(underlay_lab, "h2", "h3")
        code, out, _ = run_cli("status", "--name", NAME)
        assert code == 0
        h1_row = next(line for line in out.splitlines() if line.startswith("h1 "))
        assert " h2 " in f" {h1_row} "
        assert run_cli("cut", "h1", "h2", "--name", NAME)[0] == 0  # idempotent
    finally:
        assert run_cli("heal", "h1", "h2", "--name", NAME)[0] == 0
    assert underlay_ping(underlay_lab, "h1", "h2")
    assert run_cli("heal", "h1", "h2", "--name", NAME)[0] == 0  # idempotent


def test_bad_host_names_get_one_line_and_change_nothing(underlay_lab: Lab):
    code, _, err = run_cli("cut", "h1", "h9", "--name", NAME)
    assert code == 1
    assert "no host 'h9'" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("cut", "h1", "h1", "--name", NAME)
    assert code == 1 and "same host" in err
    assert underlay_lab.cut_from("h1") == []


def test_a_lab_name_is_checked():
    code = subprocess.run(
        [sys.executable, "-m", "wgmesh", "lab", "up", "--name", "Way-Too-Long-Name"],
        capture_output=True,
        text=True,
    )
    assert code.returncode == 2
    assert "lab name" in code.stderr
    assert not any(ns.startswith("wgl-Way") for ns in netns.list_namespaces())


def test_down_removes_everything_even_without_its_record():
    """A crash in the middle of `lab up`: namespaces, a recorded process, an unrecorded one inside a host
    namespace, and a corrupt record. `lab down` still removes all of it and ends only the lab's processes."""
    name = "e2ed"
    layout = LabLayout(name)
    tear_down(layout)
    bystander = subprocess.Popen(
        ["sh", "-c", "sleep 300; :", str(layout.dir)]
    )  # names the lab dir but is not in the lab
    try:
        lab = Lab.create(name, 2, mesh=False)
        h1, h2 = lab.hosts
        lab.record.host(1).agent = processes.start(
            processes.in_host(h1, ["sh", "-c", "sleep 300; :", str(h1.state_dir)]), h1.agent_log
        )
        lab.save()
        stray = processes.start(processes.in_host(h2, ["sleep", "300"]), h2.dir / "stray.log")
        layout.record_path.write_text("{not json")  # the record is lost
        recorded = lab.record.host(1).agent
        assert processes.is_ours(recorded, layout.dir) or wait_until(
            "the recorded process to run", lambda: processes.is_ours(recorded, layout.dir), 5
        )

        code, out, err = run_cli("down", "--name", name)
        assert code == 0, err
        assert f"lab {name!r} removed" in out
        assert not [ns for ns in netns.list_namespaces() if ns.startswith(f"wgl-{name}-")]
        assert not layout.dir.exists()
        assert processes.start_ticks(stray.pid) is None
        assert processes.start_ticks(recorded.pid) is None
        assert bystander.poll() is None, "lab down ended a process outside the lab"

        code, out, _ = run_cli("down", "--name", name)
        assert code == 0 and "nothing to remove" in out
    finally:
        bystander.kill()
        bystander.wait(timeout=10)
        tear_down(layout)


def test_a_recorded_pid_that_is_not_the_lab_process_any_more_is_left_alone(tmp_path: Path):
    name = "e2ep"
    layout = LabLayout(name)
    tear_down(layout)
    other = subprocess.Popen(["sleep", "300"])  # pid reuse: a recorded pid now names someone else
    try:
        lab = Lab.create(name, 1, mesh=False)
        real = processes.start(
            processes.in_host(lab.hosts[0], ["sh", "-c", "sleep 300; :", str(layout.dir)]), tmp_path / "x.log"
        )
        wait_until("the lab process to run", lambda: processes.is_ours(real, layout.dir), 5)
        lab.record.host(1).agent = real.model_copy(update={"pid": other.pid})
        lab.save()
        assert run_cli("stop", "h1", "--name", name)[1].strip() == "h1: was not running"
        assert other.poll() is None
        lab.record.host(1).agent = real
        lab.save()
        assert run_cli("stop", "h1", "--name", name)[1].strip() == "h1: stopped"
        assert processes.start_ticks(real.pid) is None
    finally:
        other.kill()
        other.wait(timeout=10)
        tear_down(layout)
        assert not os.path.exists(layout.dir)
