"""Prometheus metrics of one controller app, in a registry of its own (many apps live in one test process).

What is counted, and where:
- `wgmesh_connected_agents`, `wgmesh_nodes`, `wgmesh_map_version`, `wgmesh_relayed_routes`: read from the
  control plane at scrape time (`PlaneCollector`), so they are never stale and cost nothing between
  scrapes.
- `wgmesh_enrollments_total`, `wgmesh_key_rotations_total`, `wgmesh_refused_requests_total{reason}`:
  counted from what the API answers (`MetricsMiddleware`): an enrollment is a 200 to POST /v1/enroll, a
  key rotation a 200 "commit" to POST /v1/key, a refusal any 4xx or 5xx, by a reason named after the
  status.
- `wgmesh_map_push_duration_seconds`: from the moment a node's map changes (the plane wakes it) until a
  200 map answer leaves for that node; the first change of a burst starts the clock.

`GET /metrics` on the API listener needs the admin credential; `serve --metrics-listen HOST:PORT` also
serves the same registry without a credential on a separate listener (`exposition_app`), meant for a
loopback or otherwise private address a Prometheus server scrapes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from fastapi import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from wire import api

if TYPE_CHECKING:
    from fastapi import FastAPI
    from fastapi.params import Depends

    from controller.control import ControlPlane
    from controller.push import MapNotifier

METRICS_PATH = api.METRICS
PUSH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# HTTP status -> the `reason` label of a refused request (a small, fixed set of values).
REFUSAL_REASONS = {
    400: "malformed",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "removed",
    413: "too_large",
    415: "not_json",
    422: "invalid",
    429: "too_many",
    500: "internal_error",
    503: "unavailable",
}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def refusal_reason(status: int) -> str:
    return REFUSAL_REASONS.get(status, f"http_{status}")


class ControllerMetrics:
    """The counters and the histogram of one app, and the registry they (and the plane's gauges) live in."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.clock = clock
        self.enrollments = Counter(
            "wgmesh_enrollments", "Enrollments accepted (re-enrollments included)", registry=self.registry
        )
        self.key_rotations = Counter(
            "wgmesh_key_rotations", "WireGuard key rotations committed by nodes", registry=self.registry
        )
        self.refused = Counter(
            "wgmesh_refused_requests",
            "Requests answered with an error, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.push_seconds = Histogram(
            "wgmesh_map_push_duration_seconds",
            "Seconds from a change of a node's map until the new map leaves for its agent",
            buckets=PUSH_BUCKETS,
            registry=self.registry,
        )
        self._changed_at: dict[int, float] = {}

    def push_clock(self, wake: Callable[[Iterable[int]], None]) -> Callable[[Iterable[int]], None]:
        """`wake` (the notifier's), also starting the push clock of every node it wakes."""

        def timed(nodes: Iterable[int]) -> None:
            nodes = list(nodes)
            now = self.clock()
            for node in nodes:
                self._changed_at.setdefault(node, now)
            wake(nodes)

        return timed

    def map_sent(self, node: int) -> None:
        started = self._changed_at.pop(node, None)
        if started is not None:
            self.push_seconds.observe(max(0.0, self.clock() - started))

    def forget_except(self, nodes: Iterable[int]) -> None:
        """Drop the clocks of nodes that are gone (their map is never sent again)."""
        keep = set(nodes)
        for node in [n for n in self._changed_at if n not in keep]:
            del self._changed_at[node]

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class PlaneCollector(Collector):
    """Gauges read from the control plane when scraped."""

    def __init__(self, plane: ControlPlane, notifier: MapNotifier, metrics: ControllerMetrics) -> None:
        self.plane = plane
        self.notifier = notifier
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        plane = self.plane
        self.metrics.forget_except(plane.nodes)
        yield GaugeMetricFamily(
            "wgmesh_connected_agents",
            "Agents holding a map request (long-poll) on this controller now",
            value=self.notifier.waiting(),
        )
        yield GaugeMetricFamily("wgmesh_nodes", "Enrolled nodes", value=len(plane.nodes))
        yield GaugeMetricFamily(
            "wgmesh_map_version", "The mesh version this controller's view is at", value=plane.version
        )
        yield GaugeMetricFamily(
            "wgmesh_relayed_routes",
            "Routes (source, destination) whose next hop is a relay, not the destination",
            value=relayed_routes(plane),
        )


def relayed_routes(plane: ControlPlane) -> int:
    """How many (source, destination) routes go through a relay: both ways of every relayed pair."""
    return 2 * len(plane.mesh.router.relayed_pairs())


class MetricsMiddleware:
    """ASGI middleware counting enrollments, committed keys and refusals, and stopping push clocks."""

    def __init__(self, app: AsgiApp, metrics: ControllerMetrics, plane: ControlPlane) -> None:
        self.app = app
        self.metrics = metrics
        self.plane = plane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope.get("path", ""), scope.get("method", "")
        status = 0
        body = bytearray()
        watch_body = method == "POST" and path == api.KEY

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if status == 200 and method == "GET" and path == api.NETMAP:
                    node = self._caller(scope)
                    if node is not None:
                        self.metrics.map_sent(node)
            elif (
                message["type"] == "http.response.body" and watch_body and status == 200 and len(body) < 4096
            ):
                body.extend(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, watched)
        if status >= 400:
            self.metrics.refused.labels(refusal_reason(status)).inc()
        elif status == 200 and method == "POST" and path == api.ENROLL:
            self.metrics.enrollments.inc()
        elif watch_body and status == 200 and _phase(bytes(body)) == "commit":
            self.metrics.key_rotations.inc()

    def _caller(self, scope: Scope) -> int | None:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, credential = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and credential:
                    return self.plane.known_node(credential.strip())
        return None


def _phase(body: bytes) -> str | None:
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    return answer.get("phase") if isinstance(answer, dict) else None


def add_metrics(
    app: FastAPI, metrics: ControllerMetrics, plane: ControlPlane, notifier: MapNotifier, admin: Depends
) -> None:
    """Register the plane's gauges, the counting middleware and GET /metrics (admin) on `app`."""
    metrics.registry.register(PlaneCollector(plane, notifier, metrics))
    app.add_middleware(MetricsMiddleware, metrics=metrics, plane=plane)
    app.state.metrics = metrics

    @app.get(
        METRICS_PATH,
        tags=["admin"],
        dependencies=[admin],
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text exposition format",
                "content": {
                    CONTENT_TYPE_LATEST: {
                        "schema": {"type": "string"},
                        "example": "# TYPE wgmesh_nodes gauge\nwgmesh_nodes 3.0\n",
                    }
                },
            },
            401: {"description": "missing or unknown credential"},
            403: {"description": "a node credential, not the admin credential"},
        },
    )
    async def metrics_route() -> Response:
        """The controller's Prometheus metrics (admin; `serve --metrics-listen` serves them without)."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def exposition_app(metrics: ControllerMetrics) -> AsgiApp:
    """A bare ASGI app for the separate metrics listener (served with lifespan off): GET /metrics, 404
    for anything else."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope.get("path") == METRICS_PATH and scope.get("method") in ("GET", "HEAD"):
            status, body, kind = 200, metrics.exposition(), CONTENT_TYPE_LATEST
        else:
            status, body = 404, b'{"detail": "only GET /metrics is served here"}'
            kind = "application/json"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", kind.encode()), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})

    return app
