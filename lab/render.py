"""How the lab shows itself to a person: aligned tables, matrices and one live-updating progress line.
Pure text building, except `ProgressLine`, which owns writing to the terminal."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from typing import TextIO

from lab.observe import MeshView, PingResult
from wgmesh.table import table as table  # the table every command prints (lab.cli renders with it)
from wire.models import Topology


def matrix(names: Sequence[str], cell: dict[tuple[str, str], str], corner: str = "from\\to") -> str:
    rows = [[a, *[("·" if a == b else cell.get((a, b), "?")) for b in names]] for a in names]
    return table([corner, *names], rows)


class ProgressLine:
    """One line that rewrites itself on a terminal; elsewhere (logs, CI) a line only when it changes."""

    def __init__(self, out: TextIO = sys.stderr) -> None:
        self.out = out
        self.tty = out.isatty()
        self.last_key: str | None = None
        self.shown = False

    def update(self, text: str, key: str | None = None) -> None:
        """Show `text`; off a terminal it is printed only when `key` (default: the text) changed."""
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.out.write("\r\033[K" + text[:width])
            self.out.flush()
            self.shown = True
        elif (key or text) != self.last_key:
            self.last_key = key or text
            print(text, file=self.out, flush=True)

    def finish(self, text: str | None = None) -> None:
        if self.tty and self.shown:
            self.out.write("\r\033[K")
        if text:
            print(text, file=self.out, flush=True)
        self.shown = False
        self.last_key = None


def mesh_progress(view: MeshView, elapsed: float) -> tuple[str, str]:
    """(line, key): the progress line while waiting for the mesh, and the part that changes meaningfully."""
    n, pairs = len(view.hosts), len(view.pairs)
    key = (
        f"wg0 up {view.count('interfaces')}/{n} · addressed {view.count('addresses')}/{n} · "
        f"peers configured {view.count('configured')}/{pairs} pairs · "
        f"handshakes {view.count('handshakes')}/{pairs} pairs"
    )
    return f"[{elapsed:5.1f}s] {key}", key


def missing_pairs(view: MeshView) -> str:
    rows = []
    for p in view.missing():
        rows.append([f"{p.a} - {p.b}", "yes" if p.a_has_b else "no", "yes" if p.b_has_a else "no"])
    return table(["pair without handshake", "first has second as peer", "second has first as peer"], rows)


def ping_matrix(names: Sequence[str], results: Sequence[PingResult]) -> str:
    cells = {(r.source, r.target): (f"{r.rtt_ms:.2f}ms" if r.rtt_ms is not None else "FAIL") for r in results}
    return matrix(names, cells)


def handshake_matrix(view: MeshView, now: float) -> str:
    names = [h.name for h in view.hosts]
    cells: dict[tuple[str, str], str] = {}
    for a in names:
        for b in names:
            if a != b:
                t = view.handshake_time(a, b)
                cells[(a, b)] = "never" if t is None else f"{max(0.0, now - t):.0f}s ago"
    return matrix(names, cells, corner="seen by\\peer")


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def topology(topo: Topology) -> str:
    names = {n.node_id: n.name for n in topo.nodes}

    def name(node_id: int) -> str:
        return names.get(node_id, f"#{node_id}")

    parts = [
        table(
            ["node", "id", "tunnel address", "endpoints"],
            [[n.name, n.node_id, n.tunnel_address, ", ".join(n.endpoints) or "-"] for n in topo.nodes],
        ),
        "",
        "links (measured direct links)",
        table(
            ["link", "weight", "rtt", "loss"],
            [
                [
                    f"{name(e.a)} - {name(e.b)}",
                    _fmt(e.weight, digits=2),
                    _fmt(e.rtt_ms, "ms", 2),
                    _fmt(e.loss, "", 2),
                ]
                for e in sorted(topo.edges, key=lambda e: (name(e.a), name(e.b)))
            ]
            or [["(none yet)", "", "", ""]],
        ),
        "",
        "routes",
    ]
    rows = []
    for src, routes in sorted(topo.routes.items(), key=lambda kv: name(kv[0])):
        for r in sorted(routes, key=lambda r: name(r.destination)):
            via = "direct" if r.via == r.destination else f"via {name(r.via)} (relay)"
            rows.append(
                [f"{name(src)} -> {name(r.destination)}", r.destination_address, via, _fmt(r.cost, digits=2)]
            )
    parts.append(table(["route", "destination address", "path", "cost"], rows or [["(none)", "", "", ""]]))
    return "\n".join(parts)
