"""Key rotation that loses no packet, in a real 4-host lab (`rrot`): h4 is the rotating node N, h1 talks
to it directly, and h2 and h3 reach each other only through N (their direct link and h1-h3 are cut).

Continuous `ping -i 0.01 -c 1000` from h1 to N, from N to h1 and both ways between h2 and h3 (relayed
through N) while N rotates: none is lost in any direction. Afterwards every host's `wg show` holds only
N's new key, with a handshake newer than the rotation. The same during `wgmesh nodes rotate --all`.

The tests share one lab and run in file order. The kernel backend's part of a rotation (a key switch, a
peer swap, 0 pings lost) is proven in the VM tier by tests/netns/test_rotation_facts.py; this 4-host lab
stays on the host (under emulation it alone would take most of the tier's 10-minute budget).
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from lab.instance import Lab
from tests.e2e.harness import logs, running_lab
from tests.support import wait_until

pytestmark = [pytest.mark.root, pytest.mark.scenario]
NAME = "rrot"
N = "h4"
PAIRS = [("h1", N), (N, "h1"), ("h2", "h3"), ("h3", "h2")]
_RESULT = re.compile(r"(\d+) packets transmitted, (\d+) received")


@pytest.fixture(scope="module")
def lab():
    with running_lab(NAME, 4) as lab:
        lab.cut("h2", "h3")
        lab.cut("h1", "h3")

        def relayed() -> bool:
            status = lab.agent_status("h2")
            peer = next((p for p in status.peers if p.name == "h3"), None) if status else None
            return peer is not None and peer.route == "relay" and peer.via == N

        wait_until("h2 to reach h3 through h4", relayed, 90, interval=0.5, show=lambda: logs(lab))
        yield lab


def start_pings(lab: Lab, count: int) -> dict[tuple[str, str], subprocess.Popen[str]]:
    addresses = lab.tunnel_addresses()
    procs = {}
    for a, b in PAIRS:
        argv = ["ip", "netns", "exec", lab.host(a).namespace, "ping", "-n", "-q", "-i", "0.01"]
        argv += ["-c", str(count), "-W", "5", str(addresses[b])]
        procs[(a, b)] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return procs


def lost(procs: dict[tuple[str, str], subprocess.Popen[str]]) -> dict[tuple[str, str], int]:
    result = {}
    for pair, proc in procs.items():
        out, _ = proc.communicate(timeout=180)
        m = _RESULT.search(out)
        assert m, out
        result[pair] = int(m.group(1)) - int(m.group(2))
    return result


def wg_keys(lab: Lab, host: str) -> dict[str, float]:
    """`wg show wg0 dump` on `host`: peer public key -> latest handshake (unix seconds, 0: never)."""
    shown = lab.exec(host, ["wg", "show", "wg0", "dump"])
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.strip().splitlines()[1:]
    return {line.split("\t")[0]: float(line.split("\t")[4]) for line in lines}


def public_key(lab: Lab, host: str) -> str:
    shown = lab.exec(host, ["wg", "show", "wg0", "public-key"])
    assert shown.returncode == 0, shown.stderr
    return shown.stdout.strip()


def admin(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return lab.exec("underlay", lab.admin_argv(*args), timeout=300)


def test_rotating_n_loses_no_ping_in_any_direction(lab: Lab) -> None:
    old = public_key(lab, N)
    pinging_until = time.time() + 1000 * 0.01
    pings = start_pings(lab, 1000)
    time.sleep(2.0)  # the rotation happens while every ping runs
    started = time.time()
    # `wg show dump` gives handshakes in whole seconds: a handshake in the second the rotation starts
    # reads as that second, not earlier (the new key does not exist before `started`).
    started_second = int(started)
    rotated = admin(lab, "nodes", "rotate", N)
    assert rotated.returncode == 0, f"{rotated.stdout}{rotated.stderr}\n{logs(lab)}"
    assert "rotated node" in rotated.stdout
    assert time.time() < pinging_until, "the rotation outlasted the pings: they prove nothing"
    assert lost(pings) == {pair: 0 for pair in PAIRS}, logs(lab)
    new = public_key(lab, N)
    assert new != old
    for host in ("h1", "h2", "h3"):
        keys = wait_until(
            f"{host} to hold only N's new key with a fresh handshake",
            lambda host=host: (
                (k := wg_keys(lab, host)) and old not in k and k.get(new, 0) >= started_second and k
            ),
            30,
            show=lambda: logs(lab),
        )
        assert new in keys and old not in keys
        # the peer swapped on N's direct notice, not on the controller's (slower) map
        log = lab.host(host).agent_log.read_text()
        assert "event=peer_key_swapped" in log and "via=notice" in log, log[-2000:]
    status = wait_until(
        "N's status to show its new key and no rotation under way",
        lambda: (st := lab.agent_status(N)) and st.wg_public_key == new and st.key_rotation is None and st,
        200,
    )
    assert status.key_created_at is not None and status.key_created_at >= started - 1


def test_rotate_all_loses_no_ping_and_shows_a_progress_table(lab: Lab) -> None:
    before = {h.name: public_key(lab, h.name) for h in lab.hosts}
    pings = start_pings(lab, 2000)
    time.sleep(2.0)
    rotated = admin(lab, "nodes", "rotate", "--all")
    assert rotated.returncode == 0, f"{rotated.stdout}{rotated.stderr}\n{logs(lab)}"
    rows = rotated.stdout.splitlines()
    assert rows[0].split()[:3] == ["ID", "NAME", "RESULT"]
    assert sum(" done " in f" {row} " for row in rows) == 4
    assert rows[-1].startswith("rotated 4 of 4 nodes")
    alive = {pair: p.poll() is None for pair, p in pings.items()}
    assert all(alive.values()), "the pings ended before the rotations did: make them longer"
    assert lost(pings) == {pair: 0 for pair in PAIRS}, logs(lab)
    after = {h.name: public_key(lab, h.name) for h in lab.hosts}
    assert all(after[name] != before[name] for name in before)
    for host in lab.hosts:
        keys = wait_until(
            f"{host.name} to hold every peer's new key",
            lambda host=host: (
                (k := wg_keys(lab, host.name))
                and set(k) == {after[o.name] for o in lab.hosts if o.name != host.name}
                and k
            ),
            30,
            show=lambda: logs(lab),
        )
        assert not set(keys) & set(before.values())
