"""Key rotation figures in a real lab: packets lost and the longest stall in every direction while a
node rotates, the time one rotation takes, and the time `nodes rotate --all` takes on 10 hosts.

Four hosts, h4 is the rotating node N; h2 and h3 reach each other only through N (their direct link and
h1-h3 are cut). `ping -D -i 0.01 -c 1000` runs h1->N, N->h1, h2->h3 and h3->h2 while N rotates.
A stall is how late the slowest reply of a direction came (its round trip: a packet staged during the
rotation comes back late, not lost).

Baseline, measured in the same run: the same pings with no rotation, so `stall_ratio` says how much
longer the worst reply waits because of the rotation. Needs root and wireguard-go; otherwise it prints
a RESULT line saying why it was skipped.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable

from lab.command import LabError, check_can_run_lab
from lab.instance import Lab
from lab.layout import LabLayout
from lab.teardown import tear_down

NAME = "rbench"
N = "h4"
PAIRS = [("h1", N), (N, "h1"), ("h2", "h3"), ("h3", "h2")]
COUNT = 1000
ALL_HOSTS = 10
_REPLY = re.compile(r"icmp_seq=(\d+) .*time=([\d.]+) ms")
_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")


def wait(what: str, probe: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while not probe():
        if time.monotonic() - start > timeout:
            raise LabError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - start


def admin(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return lab.exec("underlay", lab.admin_argv(*args), timeout=900)


def pings(lab: Lab) -> dict[tuple[str, str], subprocess.Popen[str]]:
    addresses = lab.tunnel_addresses()
    procs = {}
    for a, b in PAIRS:
        argv = ["ip", "netns", "exec", lab.host(a).namespace, "ping", "-n", "-i", "0.01", "-c", str(COUNT)]
        argv += ["-W", "5", str(addresses[b])]
        procs[(a, b)] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return procs


def results(procs: dict[tuple[str, str], subprocess.Popen[str]]) -> dict[tuple[str, str], tuple[int, float]]:
    """(lost, slowest reply in ms) per direction."""
    out: dict[tuple[str, str], tuple[int, float]] = {}
    for pair, proc in procs.items():
        text, _ = proc.communicate(timeout=300)
        m = _SUMMARY.search(text)
        if m is None:
            raise LabError(f"ping {pair}: no summary: {text[-200:]}")
        rtts = [float(t) for _seq, t in _REPLY.findall(text)]
        out[pair] = (int(m.group(1)) - int(m.group(2)), max(rtts, default=float("nan")))
    return out


def relayed_lab(name: str) -> Lab:
    tear_down(LabLayout(name))
    lab = Lab.create(name, 4)
    lab.wait_for_mesh(120)
    lab.cut("h2", "h3")
    lab.cut("h1", "h3")

    def relayed() -> bool:
        status = lab.agent_status("h2")
        peer = next((p for p in status.peers if p.name == "h3"), None) if status else None
        return peer is not None and peer.route == "relay" and peer.via == N

    wait("h2 to reach h3 through h4", relayed, 120)
    return lab


def measure_one() -> tuple[
    dict[tuple[str, str], tuple[int, float]], dict[tuple[str, str], tuple[int, float]], float
]:
    lab = relayed_lab(NAME)
    try:
        baseline = results(pings(lab))
        procs = pings(lab)
        time.sleep(2.0)
        start = time.monotonic()
        done = admin(lab, "nodes", "rotate", N)
        took = time.monotonic() - start
        if done.returncode != 0:
            raise LabError(f"nodes rotate failed: {done.stderr.strip()}")
        return baseline, results(procs), took
    finally:
        tear_down(LabLayout(NAME))


def measure_all(hosts: int) -> float:
    name = NAME + "a"
    tear_down(LabLayout(name))
    try:
        lab = Lab.create(name, hosts)
        lab.wait_for_mesh(300)
        start = time.monotonic()
        done = admin(lab, "nodes", "rotate", "--all", "--timeout", "800")
        if done.returncode != 0:
            raise LabError(f"nodes rotate --all failed: {done.stderr.strip()}")
        print(done.stdout, flush=True)
        return time.monotonic() - start
    finally:
        tear_down(LabLayout(name))


def main() -> int:
    try:
        check_can_run_lab()
    except LabError as e:
        print(f"skipped: {e}")
        print(f"RESULT name=rotation skipped=1 reason={str(e).split(':')[0].replace(' ', '_')}")
        return 0
    baseline, rotated, one_s = measure_one()
    print(f"{'direction':<10} {'lost':>5} {'slowest ms (rotation)':>22} {'slowest ms (baseline)':>22}")
    for pair in PAIRS:
        print(
            f"{pair[0]}->{pair[1]:<6} {rotated[pair][0]:>5} {rotated[pair][1]:>22.1f} {baseline[pair][1]:>22.1f}"
        )
    print(f"one rotation of {N}: {one_s:.2f} s", flush=True)
    all_s = measure_all(ALL_HOSTS)
    print(f"rotate --all on {ALL_HOSTS} hosts: {all_s:.1f} s")
    lost = sum(v[0] for v in rotated.values())
    stall = max(v[1] for v in rotated.values())
    base = max(v[1] for v in baseline.values())
    per_dir = " ".join(f"stall_{a}_{b}_ms={rotated[(a, b)][1]:.1f}" for a, b in PAIRS)
    print(
        f"RESULT name=rotation lost={lost} stall_max_ms={stall:.1f} rotate_one_s={one_s:.2f} "
        f"rotate_all10_s={all_s:.1f} baseline_rtt_max_ms={base:.1f} stall_ratio={stall / base:.1f} {per_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
