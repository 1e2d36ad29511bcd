"""Prometheus metrics of one agent, off by default (`agent up --metrics-listen 127.0.0.1:9586`).

Every value is read when scraped: the agent's last status (routes, RTT, loss: what status.json says)
with the live counters of the device (handshakes, bytes) on top, so a scrape never waits for the
agent's loop. The listener runs in a thread of its own; backends' reads are thread safe.

Peer metrics carry `public_key` (base64, as `wg show` prints it) and `name`; `wgmesh_peer_info` adds
`endpoint` and `route` (direct, relay via NAME, none).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.device import Device
from agent.settings import AgentError
from agent.status import AgentStatus, format_route, with_live_device

PEER_LABELS = ["public_key", "name"]


class AgentCollector(Collector):
    def __init__(self, status: Callable[[], AgentStatus | None], device: Callable[[], Device | None]) -> None:
        self.status = status
        self.device = device

    def collect(self) -> Iterator[Metric]:
        status = self.status()
        handshake = GaugeMetricFamily(
            "wgmesh_peer_last_handshake_seconds",
            "Unix time of the last handshake with the peer (0: none yet)",
            labels=PEER_LABELS,
        )
        received = CounterMetricFamily(
            "wgmesh_peer_receive_bytes", "Bytes received from the peer", labels=PEER_LABELS
        )
        sent = CounterMetricFamily("wgmesh_peer_transmit_bytes", "Bytes sent to the peer", labels=PEER_LABELS)
        rtt = GaugeMetricFamily(
            "wgmesh_peer_rtt_seconds", "Round trip of the last probe of the direct link", labels=PEER_LABELS
        )
        loss = GaugeMetricFamily(
            "wgmesh_peer_loss_ratio", "Share of the last probes of the direct link lost", labels=PEER_LABELS
        )
        info = GaugeMetricFamily(
            "wgmesh_peer_info",
            "One per peer: its endpoint and how this host routes to it",
            labels=[*PEER_LABELS, "endpoint", "route"],
        )
        connected = GaugeMetricFamily(
            "wgmesh_agent_controller_connected", "1 while the last call to the controller succeeded"
        )
        serial = GaugeMetricFamily("wgmesh_agent_map_serial", "Serial of the network map applied")
        if status is not None:
            device = self._device()
            if device is not None:
                status = with_live_device(status, device)
            connected.add_metric([], 1.0 if status.controller == "connected" else 0.0)
            if status.serial is not None:
                serial.add_metric([], status.serial)
            for p in sorted(status.peers, key=lambda p: p.name):
                labels = [p.wg_public_key, p.name]
                handshake.add_metric(labels, p.latest_handshake or 0.0)
                received.add_metric(labels, p.rx_bytes)
                sent.add_metric(labels, p.tx_bytes)
                if p.rtt_ms is not None:
                    rtt.add_metric(labels, p.rtt_ms / 1000)
                if p.loss is not None:
                    loss.add_metric(labels, p.loss)
                info.add_metric([*labels, p.endpoint or "", format_route(p)], 1.0)
        yield from (handshake, received, sent, rtt, loss, info, connected, serial)

    def _device(self) -> Device | None:
        try:
            return self.device()
        except Exception:  # a device that is gone or busy: the status alone is still worth serving
            return None


def agent_registry(
    status: Callable[[], AgentStatus | None], device: Callable[[], Device | None]
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(status, device))
    return registry


class MetricsListener:
    """The HTTP listener serving GET /metrics of `registry` in a thread; `close()` stops it."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry) -> None:
        try:
            server, thread = start_http_server(port, addr=host, registry=registry)
        except OSError as e:
            shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise AgentError(f"cannot listen for metrics on {shown}: {e.strerror or e}") from None
        self._server: Any = server
        self._thread: threading.Thread = thread
        bound_host, bound_port = server.server_address[:2]
        self.address = (str(bound_host), int(bound_port))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
