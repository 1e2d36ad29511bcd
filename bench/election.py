"""Leader election over the lab's WireGuard tunnels: how long a 5-host mesh is without a leader when the
leader's host dies (its program is SIGKILLed) or is cut off (its underlay isolated), with Raft's
150-300 ms election timeouts (`wgmesh p2p elect --timeouts 0.15,0.3`).

Each lab host runs `wgmesh p2p elect --json`, which prints every leader change it sees with a monotonic
time stamp (one clock for every process on the machine). Failover = from the fault to the moment the new
leader's own program says it leads (`elected`), and to the moment every survivor knows it (`known`).
Baseline, in the same run: the same programs on loopback (no namespaces, no WireGuard) and the same kills,
so the ratio says what the tunnels cost. Safety is checked on every run: no term with two leaders in any
host's view (RESULT `two_leader_terms`). Goal: median kill and cut failover <= 0.5 s.

Needs root and wireguard-go; otherwise it prints a RESULT line saying why it was skipped.
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

from keys.store import save_key
from keys.types import IdentityPrivateKey
from lab.command import LabError, check_can_run_lab
from lab.host_program import HostProgram
from lab.instance import Lab
from lab.layout import LabLayout
from lab.processes import wgmesh_argv
from lab.teardown import tear_down
from p2p.core.directory import Directory, DirectoryEntry
from p2p.core.election import LeaderChanged, leaders_by_term
from p2p.directory import FILE_NAME, DirectoryError, load_directory, write_directory

NAME = "elec"
HOSTS = 5
ROUNDS = 8
TIMEOUTS = "0.15,0.3"
GOAL_S = 0.5


@dataclass
class Programs:
    """One election program per host; killed programs' output is kept for the safety check."""

    start: Callable[[str], HostProgram]
    running: dict[str, HostProgram] = field(default_factory=dict)
    ended: list[HostProgram] = field(default_factory=list)

    def launch(self, host: str) -> None:
        self.running[host] = self.start(host)

    def kill(self, host: str) -> None:
        program = self.running.pop(host)
        program.kill()
        self.ended.append(program)

    def close(self) -> None:
        for program in self.running.values():
            program.stop()
        self.ended += self.running.values()
        self.running.clear()

    def changes(self, program: HostProgram) -> list[tuple[float, LeaderChanged]]:
        return [(line["t"], LeaderChanged(line["leader"], line["term"])) for line in program.json_lines()]

    def views(self) -> list[list[LeaderChanged]]:
        return [[c for _, c in self.changes(p)] for p in [*self.ended, *self.running.values()]]

    def last(self, host: str) -> LeaderChanged | None:
        changes = self.changes(self.running[host])
        return changes[-1][1] if changes else None

    def agreed(self, hosts: list[str] | None = None) -> LeaderChanged | None:
        """The leader every running (or named) host's last change names, if they agree on one."""
        lasts = [self.last(h) for h in (hosts or list(self.running))]
        first = lasts[0] if lasts else None
        if first is None or first.leader is None or any(c != first for c in lasts):
            return None
        return first

    def node_of(self, host: str) -> int:
        for line in self.running[host].json_lines():
            return int(line["node"])
        raise LabError(f"{host} has printed nothing yet")


def wait(what: str, probe: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.01)


def failover(programs: Programs, fault: Callable[[str], None], leader_host: str) -> tuple[float, float]:
    """(elected s, known s) after `fault(leader_host)`."""
    before = programs.agreed()
    assert before is not None and before.leader is not None
    survivors = [h for h in programs.running if h != leader_host]
    started = time.monotonic()
    fault(leader_host)

    def new_leader() -> LeaderChanged | None:
        found = programs.agreed(survivors)
        return found if found is not None and found.term > before.term else None

    wait("a new leader known by every survivor", new_leader, 30)
    new = new_leader()
    assert new is not None
    new_host = next(h for h in survivors if programs.node_of(h) == new.leader)
    elected = min(t for t, c in programs.changes(programs.running[new_host]) if c == new)
    known = max(min(t for t, c in programs.changes(programs.running[h]) if c == new) for h in survivors)
    return elected - started, known - started


def host_of(programs: Programs, node: int) -> str:
    return next(h for h in programs.running if programs.node_of(h) == node)


def kill_rounds(programs: Programs, rounds: int) -> list[tuple[float, float]]:
    results = []
    for _ in range(rounds):
        wait("every host to agree on a leader", programs.agreed, 30)
        current = programs.agreed()
        assert current is not None and current.leader is not None
        leader = host_of(programs, current.leader)
        results.append(failover(programs, programs.kill, leader))
        programs.launch(leader)
    wait("every host to agree on a leader", programs.agreed, 30)
    return results


def cut_rounds(lab: Lab, programs: Programs, rounds: int) -> list[tuple[float, float]]:
    results = []
    cut_from: list[str] = []

    def isolate(host: str) -> None:
        cut_from.extend(lab.isolate(host))

    for _ in range(rounds):
        wait("every host to agree on a leader", programs.agreed, 60)
        current = programs.agreed()
        assert current is not None and current.leader is not None
        leader = host_of(programs, current.leader)
        cut_from.clear()
        try:
            results.append(failover(programs, isolate, leader))
        finally:
            for other in cut_from:
                lab.heal(leader, other)
    wait("every host to agree on a leader after the heal", programs.agreed, 60)
    return results


# --- the lab and the loopback baseline --------------------------------------------------------------------


def full_directory(lab: Lab, host: str) -> bool:
    try:
        directory = load_directory(lab.host(host).state_dir / FILE_NAME)
    except DirectoryError:
        return False
    return len(directory) == HOSTS - 1


@contextlib.contextmanager
def lab_programs() -> Iterator[tuple[Lab, Programs]]:
    layout = LabLayout(NAME)
    tear_down(layout)
    programs: Programs | None = None
    try:
        lab = Lab.create(NAME, HOSTS)
        view = lab.wait_for_mesh(120)
        if not view.complete:
            raise LabError(f"the mesh did not complete: {[(p.a, p.b) for p in view.missing()]}")
        for h in lab.hosts:
            wait(f"{h.name}'s p2p directory", lambda n=h.name: full_directory(lab, n), 60)  # type: ignore[misc]
        argv = wgmesh_argv("p2p", "elect", "--json", "--timeouts", TIMEOUTS)
        programs = Programs(lambda host: HostProgram.start(lab, host, argv))
        for h in lab.hosts:
            programs.launch(h.name)
        yield lab, programs
    finally:
        if programs is not None:
            programs.close()
        tear_down(layout)


@contextlib.contextmanager
def loopback_programs() -> Iterator[Programs]:
    """The same programs on 127.0.0.x with a directory of their own, as plain processes."""
    import subprocess

    with tempfile.TemporaryDirectory(prefix="bench-election-") as tmp:
        keys = {i: IdentityPrivateKey.generate() for i in range(1, HOSTS + 1)}
        entries = {}
        for i, key in keys.items():
            address = f"127.0.0.{60 + i}"
            with socket.socket() as s:
                s.bind((address, 0))
                port = s.getsockname()[1]
            entries[i] = DirectoryEntry(i, f"h{i}", IPv4Address(address), "worker", key.public_key(), port)
        for i, key in keys.items():
            own = Path(tmp) / f"h{i}"
            own.mkdir()
            save_key(own / "identity.key", key)
            write_directory(
                own / FILE_NAME, Directory.of(entries[i], [e for j, e in entries.items() if j != i])
            )

        def start(host: str) -> HostProgram:
            argv = [
                *wgmesh_argv("p2p", "elect", "--json", "--timeouts", TIMEOUTS),
                "--state-dir",
                f"{tmp}/{host}",
            ]
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
            )
            return HostProgram(host, popen)

        programs = Programs(start)
        try:
            for i in keys:
                programs.launch(f"h{i}")
            yield programs
        finally:
            programs.close()


def median(results: list[tuple[float, float]], index: int) -> float:
    return statistics.median(r[index] for r in results)


def main() -> int:
    try:
        check_can_run_lab()
    except LabError as e:
        print(f"skipped: {e}")
        print(f"RESULT name=election skipped=1 reason={str(e).split(':')[0].replace(' ', '_')}")
        return 0
    print(f"loopback baseline: {HOSTS} processes, {ROUNDS} leader kills ...", file=sys.stderr, flush=True)
    with loopback_programs() as base:
        wait("a first leader on loopback", base.agreed, 30)
        base_kill = kill_rounds(base, ROUNDS)
        base_safety = leaders_by_term(base.views())
    print(f"lab: {HOSTS} hosts, {ROUNDS} kills and {ROUNDS} cuts ...", file=sys.stderr, flush=True)
    with lab_programs() as (lab, programs):
        wait("a first leader over the tunnels", programs.agreed, 60)
        kill = kill_rounds(programs, ROUNDS)
        cut = cut_rounds(lab, programs, ROUNDS)
        safety = leaders_by_term(programs.views())
    doubles = sorted(t for t, leaders in {**base_safety, **safety}.items() if len(leaders) > 1)
    doubles_lab = sum(1 for leaders in safety.values() if len(leaders) > 1)
    doubles_base = sum(1 for leaders in base_safety.values() if len(leaders) > 1)
    rows = [
        ("loopback, leader killed", base_kill),
        ("lab tunnels, leader's host killed", kill),
        ("lab tunnels, leader's host cut off", cut),
    ]
    print(f"\nfailover with election timeouts {TIMEOUTS} s, {HOSTS} nodes, {ROUNDS} rounds each")
    print(f"{'fault':36}  {'elected p50':>11}  {'elected max':>11}  {'known by all p50':>16}")
    for title, results in rows:
        print(
            f"{title:36}  {median(results, 0):>9.3f} s  {max(r[0] for r in results):>9.3f} s  "
            f"{median(results, 1):>14.3f} s"
        )
    kill_s, cut_s, base_s = median(kill, 1), median(cut, 1), median(base_kill, 1)
    print(
        f"terms with two leaders in some view: {doubles or 'none'} "
        f"(of {len(safety)} terms over the tunnels, {len(base_safety)} on loopback)"
    )
    ok = kill_s <= GOAL_S and cut_s <= GOAL_S and not doubles
    print(
        f"RESULT name=election hosts={HOSTS} rounds={ROUNDS} timeouts={TIMEOUTS} "
        f"kill_failover_p50_s={kill_s:.3f} cut_failover_p50_s={cut_s:.3f} "
        f"kill_elected_p50_s={median(kill, 0):.3f} cut_elected_p50_s={median(cut, 0):.3f} "
        f"loopback_kill_failover_p50_s={base_s:.3f} tunnel_ratio={kill_s / base_s:.2f} "
        f"two_leader_terms={doubles_lab} loopback_two_leader_terms={doubles_base} "
        f"goals_met={'yes' if ok else 'no'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
