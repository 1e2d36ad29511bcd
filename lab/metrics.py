"""`wgmesh lab metrics`: scrape the lab's controller and agents (their metrics listeners on the loopback
of their own namespace) and show what they say as tables a person reads, or as JSON.

A process that does not answer is shown as such, never as zeros: the rest of the lab is still shown.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from agent.status import format_age, format_bytes
from lab.instance import Lab
from lab.layout import AGENT_METRICS_LISTEN, CONTROLLER_METRICS_LISTEN
from lab.underlay_http import request
from wgmesh.table import table


@dataclass(frozen=True)
class MetricSample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass
class Scrape:
    """One process's metrics, or why there are none."""

    where: str  # "controller" or a host name
    url: str
    samples: list[MetricSample] = field(default_factory=list)
    error: str | None = None

    def value(self, name: str, **labels: str) -> float | None:
        for s in self.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
        return None

    def of(self, name: str) -> list[MetricSample]:
        return [s for s in self.samples if s.name == name]

    def json(self) -> dict[str, object]:
        return {
            "url": self.url,
            "error": self.error,
            "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in self.samples],
        }


def scrape(namespace: str, where: str, listen: str) -> Scrape:
    url = f"http://{listen}/metrics"
    out = Scrape(where, url)
    try:
        reply = request(namespace, "GET", url, timeout=5)
    except OSError as e:
        out.error = f"no answer ({e.strerror or e})"
        return out
    if reply.status != 200:
        out.error = f"answered {reply.status}"
        return out
    try:
        for family in text_string_to_metric_families(reply.body.decode()):
            # `_created` samples (when a counter started) say nothing a person looks for here
            out.samples += [
                MetricSample(s.name, dict(s.labels), s.value)
                for s in family.samples
                if not s.name.endswith("_created")
            ]
    except ValueError as e:
        out.error = f"not Prometheus text: {e}"
    return out


def scrape_lab(lab: Lab) -> tuple[Scrape, list[Scrape]]:
    first = lab.replicas[0]  # a lab on PostgreSQL: replica c1, in its own namespace
    controller = scrape(
        first.namespace or lab.layout.underlay_namespace, "controller", CONTROLLER_METRICS_LISTEN
    )
    agents = [scrape(h.namespace, h.name, AGENT_METRICS_LISTEN) for h in lab.hosts]
    return controller, agents


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if value != int(value) else str(int(value))


def render_controller(c: Scrape) -> str:
    if c.error:
        return f"controller {c.url}: {c.error}"
    count = c.value("wgmesh_map_push_duration_seconds_count") or 0
    total = c.value("wgmesh_map_push_duration_seconds_sum") or 0
    push = f"{count:.0f} maps, mean {total / count * 1000:.1f} ms" if count else "none yet"
    refused = sorted((s.labels["reason"], s.value) for s in c.of("wgmesh_refused_requests_total") if s.value)
    rows = [
        ["nodes", _number(c.value("wgmesh_nodes"))],
        ["agents holding a map request", _number(c.value("wgmesh_connected_agents"))],
        ["map version", _number(c.value("wgmesh_map_version"))],
        ["relayed routes", _number(c.value("wgmesh_relayed_routes"))],
        ["enrollments", _number(c.value("wgmesh_enrollments_total"))],
        ["key rotations", _number(c.value("wgmesh_key_rotations_total"))],
        ["map pushes", push],
        ["refused requests", ", ".join(f"{r} {v:.0f}" for r, v in refused) or "none"],
    ]
    return f"controller ({c.url})\n" + table(["metric", "value"], rows)


def render_agents(agents: list[Scrape], now: float) -> str:
    rows: list[list[object]] = []
    silent = []
    for a in agents:
        if a.error:
            silent.append(f"{a.where}: {a.error}")
            continue
        for info in sorted(a.of("wgmesh_peer_info"), key=lambda s: s.labels["name"]):
            key = {"public_key": info.labels["public_key"]}
            shaken = a.value("wgmesh_peer_last_handshake_seconds", **key)
            rtt = a.value("wgmesh_peer_rtt_seconds", **key)
            loss = a.value("wgmesh_peer_loss_ratio", **key)
            rows.append(
                [
                    a.where,
                    info.labels["name"],
                    info.labels["route"],
                    info.labels["endpoint"] or "-",
                    format_age(now - shaken) if shaken else "never",
                    f"{rtt * 1000:.1f} ms" if rtt is not None else "-",
                    f"{loss:.0%}" if loss is not None else "-",
                    format_bytes(int(a.value("wgmesh_peer_receive_bytes_total", **key) or 0)),
                    format_bytes(int(a.value("wgmesh_peer_transmit_bytes_total", **key) or 0)),
                ]
            )
    headers = ["host", "peer", "route", "endpoint", "handshake", "rtt", "loss", "received", "sent"]
    text = "agents\n" + table(headers, rows)
    if silent:
        text += "\n" + "\n".join(silent)
    return text


def render(controller: Scrape, agents: list[Scrape], now: float | None = None) -> str:
    return render_controller(controller) + "\n\n" + render_agents(agents, time.time() if now is None else now)
