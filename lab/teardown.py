"""`lab down`: remove every namespace, link, process and file of one lab, also after a crash or a
half-finished `lab up`.

Order matters: processes first (recorded pids, verified; a lab on PostgreSQL's cluster through its
pid file; then whatever still runs inside the lab's namespaces, e.g. the wireguard-go an agent
started), then the namespaces (which takes the veth pairs,
the bridge and the nftables tables with them), then the lab directory. Namespaces are found by the
lab's prefix, so a lost or corrupt record still gets everything removed.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lab import netns, processes
from lab.layout import LABS_ROOT, NAMESPACE_PREFIX, LabLayout
from lab.postgres import stop_data_dir
from lab.record import load_if_present


@dataclass(frozen=True)
class TeardownReport:
    recorded_processes: int  # recorded lab processes that were running and were ended
    other_processes: int  # processes found inside the lab's namespaces and ended
    namespaces: int
    removed_dir: bool

    @property
    def found_anything(self) -> bool:
        return bool(self.recorded_processes or self.other_processes or self.namespaces or self.removed_dir)


def tear_down(layout: LabLayout, progress: Callable[[str], None] = lambda _: None) -> TeardownReport:
    record = load_if_present(layout)
    recorded = 0
    ended: list[tuple[int, int]] = []
    if record is not None:
        procs = [i.relay for i in record.impairments]
        procs += [h.agent for h in record.hosts if h.agent is not None]
        # Controllers last: agents may talk to them while they stop.
        procs += [record.controller] if record.controller is not None else []
        procs += list(record.replica_processes.values())
        for proc in procs:
            progress(f"stopping pid {proc.pid}")
            if processes.end_recorded(proc, layout.dir, grace_s=3.0):
                recorded += 1
                ended.append((proc.pid, proc.start_ticks))
        if record.postgres_dir is not None:
            progress("stopping PostgreSQL")
            stop_data_dir(Path(record.postgres_dir))
    namespaces = [ns for ns in netns.list_namespaces() if layout.owns_namespace(ns)]
    # Hosts before the underlay: a host's veth peer lives in the underlay.
    namespaces.sort(key=lambda ns: ns == layout.underlay_namespace)
    others = 0
    for ns in namespaces:
        progress(f"removing {ns}")
        in_ns = processes.end_in_namespace(netns.namespace_pids(ns))
        others += len(in_ns)
        ended += in_ns
        netns.delete_namespace(ns)
    if ended:
        # `down` returns when they are gone from the process table, not while they linger as zombies.
        progress(f"waiting for {len(ended)} exited processes to be reaped")
        processes.wait_reaped(ended)
    removed_dir = layout.dir.exists()
    if removed_dir:
        shutil.rmtree(layout.dir)
    if layout.root.exists() and not any(layout.root.iterdir()):
        layout.root.rmdir()
    return TeardownReport(recorded, others, len(namespaces), removed_dir)


def known_labs() -> list[str]:
    """Names of labs that have a directory or a namespace on this machine."""
    names = {p.name for p in LABS_ROOT.iterdir() if p.is_dir()} if LABS_ROOT.exists() else set()
    for ns in netns.list_namespaces():
        if ns.startswith(NAMESPACE_PREFIX):
            names.add(ns[len(NAMESPACE_PREFIX) :].rsplit("-", 1)[0])
    return sorted(names)
