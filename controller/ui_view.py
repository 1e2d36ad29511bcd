"""What the topology page shows, computed from the control plane: nodes (address, key age, last poll,
relay), every link (up with its RTT, loss and weight, or down), and the relayed routes with their path.

Rules:
- A link is listed when the topology has an edge for it (up) or remembers it went down (down); a pair
  the policy never links is not a link.
- A relayed route is listed once per pair (paths are symmetric, see controller.routing), both ways
  (`h1 ↔ h2 via h3`), the name that sorts first first; at most MAX_RELAYED, the total is always given.
- `health` names what the page colours: down (no edge, or loss >= LOSS_BAD), lossy (any loss), slow
  (RTT >= SLOW_MS), ok; unmeasured when nothing was measured yet.
- Times are unix seconds (when a key was made, a node last polled, a link went down), never ages: the
  view changes only when the mesh does, and the page computes ages against the `now` sent with it.
- Pure apart from reading the plane.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controller.control import ControlPlane

MAX_RELAYED = 200
SLOW_MS = 50.0
LOSS_BAD = 0.5


def link_health(up: bool, rtt_ms: float | None, loss: float | None) -> str:
    if not up or (loss is not None and loss >= LOSS_BAD):
        return "down"
    if loss:
        return "lossy"
    if rtt_ms is None:
        return "unmeasured"
    return "slow" if rtt_ms >= SLOW_MS else "ok"


class LastMeasured:
    """What each link last measured over its direct path, kept per app. Once traffic is routed around a
    link, its probes go through the relay and say nothing about it (rtt and loss None); a link that
    carries no route then shows what was seen before, marked `earlier`, instead of nothing."""

    def __init__(self) -> None:
        self._seen: dict[tuple[int, int], tuple[float | None, float | None]] = {}

    def fill(self, links: list[dict[str, Any]]) -> None:
        for link in links:
            key = (link["a"], link["b"])
            if not link["up"]:
                continue
            if link["rtt_ms"] is not None or link["loss"] is not None:
                self._seen[key] = (link["rtt_ms"], link["loss"])
            elif key in self._seen and not link["carries_routes"]:
                link["rtt_ms"], link["loss"] = self._seen[key]
                link["earlier"] = True
                link["health"] = link_health(True, link["rtt_ms"], link["loss"])


def _unix(t: datetime | None) -> float | None:
    return None if t is None else round(t.timestamp(), 1)


def mesh_view(plane: ControlPlane) -> dict[str, Any]:
    mesh = plane.mesh
    router = mesh.router
    infos = plane.node_infos()
    names = {n.node_id: n.name for n in infos}
    nodes = []
    for n in infos:
        nodes.append(
            {
                "id": n.node_id,
                "name": n.name,
                "address": str(n.tunnel_address),
                "role": n.role,
                "key_created_at": _unix(n.key_created_at),
                "rotation": n.rotation,
                "last_seen": _unix(n.last_seen),
                "relays": bool(n.node_id in router.index and router.forwards(n.node_id)),
            }
        )
    used = mesh.link_use()
    links = []
    for a, b, weight, rtt_ms, loss in mesh.edge_rows():
        links.append(
            {
                "a": a,
                "b": b,
                "up": True,
                "rtt_ms": rtt_ms,
                "loss": loss,
                "weight": weight,
                "carries_routes": used(a, b),
                "health": link_health(True, rtt_ms, loss),
            }
        )
    for (a, b), state in sorted(mesh.topology.links.items()):
        if state.down_since is None or a not in names or b not in names or mesh.topology.is_up(a, b):
            continue
        rtts = [s.rtt_ms for s in state.samples.values() if s.rtt_ms is not None]
        losses = [s.loss for s in state.samples.values() if s.loss is not None]
        links.append(
            {
                "a": a,
                "b": b,
                "up": False,
                "rtt_ms": round(sum(rtts) / len(rtts), 3) if rtts else None,
                "loss": max(losses) if losses else None,
                "weight": None,
                "carries_routes": False,
                "down_since": _unix(state.down_since),
                "health": "down",
            }
        )
    relayed, total = _relayed(plane)
    return {
        "version": plane.version,
        "nodes": nodes,
        "links": links,
        "relayed": [_relayed_route(names, path) for _s, _d, path in relayed],
        "relayed_total": total,
    }


def _relayed_route(names: dict[int, str], path: list[int]) -> dict[str, Any]:
    if names[path[0]] > names[path[-1]]:
        path = path[::-1]
    via = ", ".join(names[h] for h in path[1:-1])
    return {
        "source": path[0],
        "destination": path[-1],
        "path": path,
        "text": f"{names[path[0]]} ↔ {names[path[-1]]} via {via}",
    }


def _relayed(plane: ControlPlane) -> tuple[list[tuple[int, int, list[int]]], int]:
    router = plane.mesh.router
    pairs = router.relayed_pairs()
    out = []
    for s_i, d_i in pairs[:MAX_RELAYED].tolist():
        s, d = router.nodes[s_i], router.nodes[d_i]
        path = router.path(s, d)
        if path is not None:
            out.append((s, d, path))
    return sorted(out), len(pairs)
