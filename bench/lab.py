"""Lab figures: how fast a real mesh forms, absorbs a new host, forgets a removed one, routes around a
slow link (`lab delay`) and back when it heals, around a cut link, and how much memory its processes use, for N = 3 and N = 10
hosts.

Baseline, measured in the same run: building the same namespaces and underlay without controller and
agents (`lab up --underlay-only`), so the ratio says what the mesh costs on top of the namespaces.

Every figure is a deadline-bounded poll of what a user would check: handshakes in `wg`, pings over the
tunnel, peers on the interface. Needs root and wireguard-go; otherwise it prints a RESULT line saying
why it was skipped.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from lab import netns, processes
from lab.command import LabError, check_can_run_lab
from lab.controller_admin import node_id
from lab.instance import Lab
from lab.layout import LabLayout
from lab.teardown import tear_down
from wgmesh.table import table

NAME = "bench"
SIZES = (3, 10)
POLL_S = 0.1
AGENT_GOAL_MIB = 50.0  # issue 10: an agent's peak RSS in the lab


@dataclass
class Figures:
    hosts: int
    underlay_s: float
    up_s: float
    join_s: float
    removal_s: float
    delay_s: float
    heal_s: float
    cut_s: float
    agent_hwm_kib: int
    agent_hwm_mean_kib: float
    wireguard_go_hwm_kib: int
    controller_hwm_kib: int


def timed_until(what: str, probe: Callable[[], bool], timeout: float) -> float:
    """Seconds until `probe()` is true; raises LabError at the deadline."""
    start = time.monotonic()
    while not probe():
        if time.monotonic() - start > timeout:
            raise LabError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(POLL_S)
    return time.monotonic() - start


def all_reach(lab: Lab, pairs: list[tuple[str, str]]) -> Callable[[], bool]:
    """A probe that is true once every (source, target) pair has answered one echo (answers are kept)."""
    pending = set(pairs)

    def probe() -> bool:
        todo = sorted(pending)
        with ThreadPoolExecutor(max_workers=max(1, min(16, len(todo)))) as pool:
            answers = list(pool.map(lambda p: lab.ping(p[0], p[1], timeout_s=0.5), todo))
        pending.difference_update(p for p, rtt in zip(todo, answers, strict=True) if rtt is not None)
        return not pending

    return probe


def routed(lab: Lab, source: str, target: str) -> str | None:
    """How `source`'s agent routes to `target` ("direct", "relay"), as its status.json says."""
    status = lab.agent_status(source)
    peer = status.peer(target) if status else None
    return None if peer is None else peer.route


def relayed(lab: Lab, source: str, target: str) -> bool:
    return routed(lab, source, target) == "relay"


def underlay_baseline(hosts: int) -> float:
    layout = LabLayout(NAME)
    tear_down(layout)
    start = time.monotonic()
    try:
        Lab.create(NAME, hosts, mesh=False)
        return time.monotonic() - start
    finally:
        tear_down(layout)


def memory(lab: Lab) -> tuple[list[int], list[int], int]:
    """Peak RSS (KiB) of the agents, of the wireguard-go processes, and of the controller."""
    agents: list[int] = []
    wggo: list[int] = []
    for h in lab.hosts:
        agent = lab.record.host(h.index).agent
        agent_pid = agent.pid if agent else None
        for pid in netns.namespace_pids(h.namespace):
            hwm = processes.peak_memory_kib(pid)
            if hwm is not None:
                (agents if pid == agent_pid else wggo).append(hwm)
    ctl = lab.record.controller
    controller = processes.peak_memory_kib(ctl.pid) if ctl else None
    return agents, wggo, controller or 0


def measure(hosts: int) -> Figures:
    underlay_s = underlay_baseline(hosts)
    layout = LabLayout(NAME)
    tear_down(layout)
    try:
        start = time.monotonic()
        lab = Lab.create(NAME, hosts)
        view = lab.wait_for_mesh(60 + 6 * hosts)
        if not view.complete:
            raise LabError(f"the mesh of {hosts} did not complete: {[(p.a, p.b) for p in view.missing()]}")
        up_s = time.monotonic() - start

        old = [h.name for h in lab.hosts]
        start = time.monotonic()
        new = lab.add_host().name
        pairs = [(new, o) for o in old] + [(o, new) for o in old]
        timed_until(f"{new} to reach and be reached by every host", all_reach(lab, pairs), 90)
        join_s = time.monotonic() - start

        # Removal: the admin removes the newest node; time until no other host has it as a peer.
        new_device = lab.observe([new]).hosts[0].device
        assert new_device is not None and new_device.public_key is not None
        gone_key = new_device.public_key
        start = time.monotonic()
        lab.run_in_underlay(lab.admin_argv("nodes", "remove", str(node_id(lab, new))))

        def forgotten() -> bool:
            return all(
                h.device is not None and gone_key not in h.device.peers for h in lab.observe(old).hosts
            )

        timed_until(f"{new} to disappear from every interface", forgotten, 60)
        removal_s = time.monotonic() - start
        lab.stop_agent(new)  # a removed node's agent has nothing left to do

        # A slow direct link (80 ms added between h2 and h3, userspace relay): time until both ends'
        # agents route to each other through a relay; then healed: time until both route direct again
        # (the agents keep probing a relayed pair's direct path).
        lab.delay("h2", "h3", 80.0)
        start = time.monotonic()
        timed_until(
            "h2 and h3 to reach each other through a relay",
            lambda: relayed(lab, "h2", "h3") and relayed(lab, "h3", "h2"),
            120,
        )
        delay_s = time.monotonic() - start
        start = time.monotonic()
        lab.heal("h2", "h3")
        timed_until(
            "h2 and h3 to route to each other direct again",
            lambda: routed(lab, "h2", "h3") == "direct" and routed(lab, "h3", "h2") == "direct",
            120,
        )
        heal_s = time.monotonic() - start

        lab.cut("h1", "h2")
        start = time.monotonic()
        timed_until("h1 to reach h2 again through a relay", all_reach(lab, [("h1", "h2")]), 120)
        cut_s = time.monotonic() - start

        agents, wggo, controller = memory(lab)
        return Figures(
            hosts, underlay_s, up_s, join_s, removal_s, delay_s, heal_s, cut_s,
            max(agents), statistics.mean(agents), max(wggo, default=0), controller,
        )  # fmt: skip
    finally:
        tear_down(layout)


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def main() -> int:
    try:
        check_can_run_lab()
    except LabError as e:
        print(f"skipped: {e}")
        print(f"RESULT name=lab skipped=1 reason={str(e).split(':')[0].replace(' ', '_')}")
        return 0
    results = []
    for n in SIZES:
        print(f"measuring N={n} ...", file=sys.stderr, flush=True)
        results.append(measure(n))
    rows = [
        [
            f.hosts,
            f"{f.underlay_s:.2f}",
            f"{f.up_s:.2f}",
            f"{f.up_s / f.underlay_s:.1f}x",
            f"{f.join_s:.2f}",
            f"{f.removal_s:.2f}",
            f"{f.delay_s:.2f}",
            f"{f.heal_s:.2f}",
            f"{f.cut_s:.2f}",
            mib(f.agent_hwm_kib),
            mib(f.agent_hwm_mean_kib),
            mib(f.wireguard_go_hwm_kib),
            mib(f.controller_hwm_kib),
        ]
        for f in results
    ]
    headers = [
        "hosts", "underlay s", "mesh up s", "up/underlay", "join->reach s", "remove->gone s", "delay->relayed s", "heal->direct s", "cut->relayed s",
        "agent max MiB", "agent mean MiB", "wg-go max MiB", "controller MiB",
    ]  # fmt: skip
    print(table(headers, rows))
    for f in results:
        peak = f.agent_hwm_kib / 1024
        verdict = "met" if peak <= AGENT_GOAL_MIB else "NOT met"
        print(f"agent memory, N={f.hosts}: peak {peak:.1f} MiB, goal <= {AGENT_GOAL_MIB:.0f} MiB: {verdict}")
    print(
        "underlay: namespaces + bridge + veths only (baseline); mesh up: `lab up` until every pair has a "
        "handshake; join: `lab add` until the new host and every host ping each other; remove: admin "
        "`nodes remove` until no peer has its key; delay: `lab delay h2 h3 80ms` until both agents route "
        "to each other through a relay; heal: `lab heal h2 h3` until both route direct again; cut: `lab cut h1 h2` until h1 pings h2 again (relay); "
        "memory: VmHWM"
    )
    parts = ["RESULT name=lab", f"agent_goal_mib={AGENT_GOAL_MIB:.0f}"]
    for f in results:
        n = f.hosts
        parts += [
            f"n{n}_underlay_s={f.underlay_s:.2f}",
            f"n{n}_up_s={f.up_s:.2f}",
            f"n{n}_up_ratio={f.up_s / f.underlay_s:.1f}",
            f"n{n}_join_s={f.join_s:.2f}",
            f"n{n}_removal_s={f.removal_s:.2f}",
            f"n{n}_delay_relay_s={f.delay_s:.2f}",
            f"n{n}_heal_direct_s={f.heal_s:.2f}",
            f"n{n}_cut_relay_s={f.cut_s:.2f}",
            f"n{n}_agent_hwm_mib={f.agent_hwm_kib / 1024:.1f}",
            f"n{n}_agent_goal_met={int(f.agent_hwm_kib / 1024 <= AGENT_GOAL_MIB)}",
            f"n{n}_controller_hwm_mib={f.controller_hwm_kib / 1024:.1f}",
        ]
    print(" ".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
