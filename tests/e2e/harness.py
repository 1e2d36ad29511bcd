"""Harness of the end-to-end tier: real labs (namespaces, controller, agents, wireguard-go) built with
`lab.instance.Lab`, one lab per test module, always torn down, and polling with deadlines. The tier
has no fixtures of its own, so no conftest: its modules import this.

Every test here is marked `root`; tests/conftest.py skips them with the reason when this machine
cannot run them (not root, wireguard-go or another tool missing).
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
from collections.abc import Iterator

from lab.cli import main as lab_main
from lab.instance import Lab
from lab.layout import LabLayout
from lab.processes import log_tail
from lab.record import LabStore
from lab.teardown import tear_down
from p2p.directory import FILE_NAME, DirectoryError, load_directory
from tests.support import wait_until


def logs(lab: Lab, lines: int = 15) -> str:
    parts = []
    for r in lab.replicas:
        parts += [f"--- controller {r.name} ({r.log})", log_tail(r.log, lines)]
    for h in lab.hosts:
        parts += [f"--- {h.name} agent ({h.agent_log})", log_tail(h.agent_log, lines)]
    return "\n".join(parts)


@contextlib.contextmanager
def running_lab(
    name: str,
    hosts: int,
    timeout: float = 120.0,
    backend: str = "userspace",
    store: LabStore = "sqlite",
    replicas: int = 1,
) -> Iterator[Lab]:
    """A lab whose mesh is complete; removed afterwards whatever happens (also leftovers of a crash)."""
    layout = LabLayout(name)
    tear_down(layout)
    try:
        lab = Lab.create(
            name,
            hosts,
            backend=backend,
            store=store,
            replicas=replicas,
            controller_timeout_s=max(timeout, 120.0),
        )
        view = lab.wait_for_mesh(timeout)
        assert view.complete, f"the mesh of {hosts} hosts did not complete: {view.missing()}\n{logs(lab)}"
        yield lab
    finally:
        tear_down(layout)


def run_cli(*argv: str) -> tuple[int, str, str]:
    """`wgmesh lab ARGV` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = lab_main(list(argv), prog="wgmesh lab")
    return code, out.getvalue(), err.getvalue()


def reachable(lab: Lab, source: str, target: str, timeout_s: float = 1.0) -> bool:
    """One echo from `source` to `target`'s tunnel address answers."""
    return lab.ping(source, target, timeout_s=timeout_s) is not None


def both_ways(host: str, others: list[str]) -> set[tuple[str, str]]:
    return {(host, o) for o in others} | {(o, host) for o in others}


def wait_all_reach(lab: Lab, pairs: set[tuple[str, str]], timeout: float, what: str) -> None:
    """Wait until every (source, target) pair has answered an echo (a pair that answered once is done)."""
    pending = set(pairs)

    def probe() -> bool:
        pending.difference_update({p for p in sorted(pending) if reachable(lab, *p, timeout_s=0.5)})
        return not pending

    wait_until(what, probe, timeout, show=lambda: f"still silent: {sorted(pending)}\n{logs(lab)}")


_RECEIVED = re.compile(r"(\d+) packets transmitted, (\d+) received")


def start_pings(lab: Lab, pairs: list[tuple[str, str]], seconds: float, interval: float = 0.5):
    """Background `ping` processes, one per pair, each lasting `seconds`."""
    addresses = lab.tunnel_addresses()
    procs = {}
    for a, b in pairs:
        argv = ["ip", "netns", "exec", lab.host(a).namespace, "ping", "-n", "-q", "-i", str(interval)]
        argv += ["-w", f"{seconds:g}", "-W", "1", str(addresses[b])]
        procs[(a, b)] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return procs


def ping_counts(procs) -> dict[tuple[str, str], tuple[int, int]]:
    counts = {}
    for pair, proc in procs.items():
        out, _ = proc.communicate(timeout=120)
        m = _RECEIVED.search(out)
        assert m, out
        counts[pair] = (int(m.group(1)), int(m.group(2)))
    return counts


def wait_for_p2p_directories(lab: Lab, timeout: float) -> None:
    """Until every host's agent has written a p2p directory that lists every other host."""

    def complete(host: str) -> bool:
        try:
            directory = load_directory(lab.host(host).state_dir / FILE_NAME)
        except DirectoryError:
            return False
        return {e.name for e in directory} == {h.name for h in lab.hosts} - {host}

    for h in lab.hosts:
        wait_until(
            f"{h.name}'s agent to write a p2p directory with every peer",
            lambda name=h.name: complete(name),  # type: ignore[misc]
            timeout,
            show=lambda: logs(lab),
        )
