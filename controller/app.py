"""The HTTP API: `create_app(settings, store, clock, tls)` builds the FastAPI app of protocol version 2.

Routes only translate HTTP to `ControlPlane` calls and back. Rules:
- Every error is JSON `{"detail": "<one line>"}` with a 4xx status; bad input changes nothing.
- Request bodies are capped at `settings.max_body_bytes` (413), whether or not they announce a length.
- Node routes take the node credential, admin routes the admin credential, both as
  `Authorization: Bearer ...`; a node can only ever name itself (no route takes a node id from a node).
- GET /v1/health answers 503 with the reason while this replica cannot reach its database; then
  writes and map requests answer 503 too, so agents and admin tools move to another replica.
- GET /v1/netmap answers at once when the caller's serial is not the current one, otherwise holds the
  request until the node's map changes (200) or the timeout passes (204). With `delta=1` the answer
  is a NetMapDelta against `since` when the controller still keeps that map, else the full map; both
  carry `kind`. Without it the answer is the full map exactly as before deltas.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import Body, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match, Route

from controller import api_examples as ex
from controller.audit import AuditOrigin
from controller.audit_routes import add_audit_routes
from controller.audited import AuditedControlPlane
from controller.auth import ADMIN, AuthFirstRoute, NodeCaller
from controller.chunked import ChunkedResponse
from controller.clock import Clock, SystemClock
from controller.control import ApiError, database_unreachable
from controller.longpoll import PollSlots
from controller.metrics import ControllerMetrics, add_metrics
from controller.openapi_errors import document_errors
from controller.policy_routes import add_policy_routes
from controller.poll_route import MAX_ID, MapPolls, PollFront
from controller.push import MapNotifier
from controller.replication import Follower
from controller.settings import Settings
from controller.store import Store, StoreUnavailable
from controller.tls import ServerTls
from controller.ui import add_ui_routes
from wire import PROTOCOL_VERSION, api
from wire.models import (
    EnrollNonce,
    EnrollRequest,
    EnrollResponse,
    ErrorBody,
    LinkReport,
    NetMap,
    NetMapDelta,
    NodeInfo,
    PreAuthKeyInfo,
    PreAuthKeyRequest,
    RemovedNodeInfo,
    Topology,
    enroll_signing_bytes,
)
from wire.rotation import KeyReport, KeyReportAnswer, RotationInfo, RotationProgress

ROTATION_TICK_S = 5.0  # how often rotations that never answered are given up and the schedule runs
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class RequestTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body too large: at most {limit} bytes")


class BodyLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes with 413, before or while reading."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                if not value.isdigit():
                    await _send_error(send, 400, "Content-Length must be a number")
                    return
                if int(value) > self.limit:
                    await _send_error(send, 413, f"request body too large: at most {self.limit} bytes")
                    return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise RequestTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)


async def _send_error(send: Send, status: int, detail: str) -> None:
    response = JSONResponse({"detail": detail}, status_code=status)
    body = response.body
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _validation_detail(exc: RequestValidationError) -> tuple[int, str]:
    errors = list(exc.errors())
    for e in errors:
        if e.get("type") == "json_invalid":
            reason = (e.get("ctx") or {}).get("error", "cannot parse")
            return 400, f"malformed JSON: {reason}"
    parts = []
    for e in errors[:4]:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        where = ".".join(loc)
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        if e.get("type") == "missing" and not loc:
            parts.append("a JSON request body is required")
        else:
            parts.append(f"{where}: {msg}" if where else msg)
    if len(errors) > 4:
        parts.append(f"and {len(errors) - 4} more")
    return 422, "; ".join(parts) or "invalid request"


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "malformed request",
        401: "missing or unknown credential",
        403: "credential not allowed here, or enrollment refused",
        404: "no such object",
        409: "conflicts with the mesh as it is (an existing node, a running rotation, peers it lacks)",
        410: "the node was removed",
        413: "request body too large",
        422: "invalid field values",
        429: "too many requests of this kind from this caller at once",
    }
    return {s: {"model": ErrorBody, "description": text[s]} for s in statuses}


def _on_path(route: BaseRoute, request: Request) -> bool:
    match, _ = route.matches(request.scope)
    return match is not Match.NONE


def _literal_paths_win(routes: list[BaseRoute]) -> None:
    """A path that is a route of its own is never a value of another route's parameter:
    `/v1/nodes/rotate-all` is that resource for every method (405 for GET, not node "rotate-all")."""
    literal = [r.path for r in routes if isinstance(r, Route) and not r.param_convertors]
    for route in routes:
        if not isinstance(route, Route) or not route.param_convertors:
            continue
        taken = [p for p in literal if route.path_regex.match(p)]
        if taken:
            exclude = "|".join(re.escape(p) for p in sorted(set(taken)))
            route.path_regex = re.compile(f"^(?!(?:{exclude})$){route.path_regex.pattern.removeprefix('^')}")


IdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="Node id")]
KeyIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="Pre-auth key id")]


def create_app(
    settings: Settings, store: Store, clock: Clock | None = None, tls: ServerTls | None = None
) -> FastAPI:
    """`tls`: what the server in front of this app presents (None: tests, or a TLS-terminating front);
    its managed CA is served at /v1/tls/ca and its pin goes into every pre-auth key."""
    notifier = MapNotifier()
    metrics = ControllerMetrics()
    plane = AuditedControlPlane(
        settings,
        store,
        clock or SystemClock(),
        on_maps_changed=metrics.push_clock(notifier.notify),
        ca_pin=tls.ca_pin if tls else None,
    )
    ca_pem = tls.ca_pem if tls else None
    follower = Follower(plane, on_unavailable=notifier.notify_all, listen_url=store.listen_url())

    async def rotation_ticks() -> None:
        while True:
            await asyncio.sleep(ROTATION_TICK_S)
            await plane.tick()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(follower.run())
        ticks = asyncio.create_task(rotation_ticks(), name="rotation-ticks")
        try:
            yield
        finally:
            ticks.cancel()
            await asyncio.gather(ticks, return_exceptions=True)
            follower.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            plane.close()

    app = FastAPI(
        title="wgmesh controller",
        version=str(PROTOCOL_VERSION),
        summary="Enrolls WireGuard hosts, computes their network maps and pushes them by long-poll.",
        lifespan=lifespan,
        openapi_tags=[
            {"name": "node", "description": "Calls an agent makes with its node credential."},
            {"name": "admin", "description": "Calls that need the admin credential."},
        ],
    )
    app.router.route_class = AuthFirstRoute
    app.state.plane = plane
    app.state.notifier = notifier
    app.state.follower = follower
    polls = PollSlots(notifier)
    app.state.polls = polls
    map_polls = MapPolls(plane, polls)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(AuditOrigin)

    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)

    @app.exception_handler(StoreUnavailable)
    async def _unavailable(_req: Request, exc: StoreUnavailable) -> JSONResponse:
        refusal = database_unreachable(exc)
        return JSONResponse({"detail": refusal.detail}, status_code=refusal.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(req: Request, exc: RequestValidationError) -> JSONResponse:
        content_type = req.headers.get("content-type", "").partition(";")[0].strip().lower()
        body_not_json = any(
            tuple(e.get("loc", ())) == ("body",) and e.get("type") != "missing" for e in exc.errors()
        )
        if body_not_json and content_type != "application/json":
            shown = content_type or "none"
            return JSONResponse(
                {"detail": f"send the body as JSON with Content-Type: application/json (got {shown})"},
                status_code=415,
            )
        status, detail = _validation_detail(exc)
        return JSONResponse({"detail": detail}, status_code=status)

    @app.exception_handler(HTTPException)
    async def _http(req: Request, exc: HTTPException) -> JSONResponse:
        headers = exc.headers
        if exc.status_code == 405:
            # Starlette names the methods of the first route on the path only; a path has one per method
            allowed = sorted({m for r in app.routes if _on_path(r, req) for m in getattr(r, "methods", ())})
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=headers)

    @app.get(
        api.HEALTH,
        tags=["node"],
        responses={
            200: {
                "content": {
                    "application/json": {"example": {"status": "ok", "protocol_version": PROTOCOL_VERSION}}
                }
            },
            503: {
                "description": "This replica cannot reach its database and serves nothing",
                "content": {
                    "application/json": {
                        "example": {
                            "status": "unhealthy",
                            "protocol_version": PROTOCOL_VERSION,
                            "detail": "database unavailable: connection refused",
                        }
                    }
                },
            },
        },
    )
    async def health() -> Response:
        """Liveness and protocol version; needs no credential. 503 while the database is away."""
        problem = plane.health()
        if problem is not None:
            body = {"status": "unhealthy", "protocol_version": PROTOCOL_VERSION, "detail": problem}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ok", "protocol_version": PROTOCOL_VERSION})

    @app.get(
        api.TLS_CA,
        tags=["node"],
        response_class=Response,
        responses={
            200: {
                "description": "The controller CA certificate",
                "content": {
                    "application/x-pem-file": {"schema": {"type": "string"}, "example": ex.TLS_CA_PEM}
                },
            },
            **_errors(404),
        },
    )
    async def tls_ca() -> Response:
        """The certificate of the controller-managed CA; needs no credential. An agent checks it against
        the pin in its pre-auth key and trusts only it from then on."""
        if ca_pem is None:
            raise ApiError(404, "this controller presents an operator certificate, not a managed CA")
        return Response(ca_pem, media_type="application/x-pem-file")

    @app.post(
        api.ENROLL_NONCE,
        tags=["node"],
        response_model=EnrollNonce,
        responses={200: {"content": {"application/json": {"example": ex.ENROLL_NONCE}}}, **_errors(413)},
    )
    async def enroll_nonce() -> EnrollNonce:
        """A single-use challenge for the next enrollment; needs no credential. Sign it (as
        EnrollRequest.nonce) within `expires_in_s`."""
        return await plane.enroll_nonce()

    @app.post(
        api.ENROLL,
        tags=["node"],
        response_model=EnrollResponse,
        responses={
            200: {"content": {"application/json": {"example": ex.ENROLL_RESPONSE}}},
            **_errors(400, 401, 403, 409, 413, 422),
        },
    )
    async def enroll(
        req: Annotated[EnrollRequest, Body(openapi_examples=ex.ENROLL_REQUEST)],
    ) -> EnrollResponse:
        """Join the mesh with a pre-auth key; re-enrolling the same identity key returns the same node
        with a fresh credential (the old one stops working)."""
        return await plane.enroll(req, enroll_signing_bytes(req))

    @app.get(
        api.NETMAP,
        tags=["node"],
        response_class=Response,
        responses={
            200: {
                "model": NetMap | NetMapDelta,
                "description": "The caller's network map (NetMap); with delta=1, a NetMapDelta against "
                "`since` (kind 'delta') or the full map (kind 'full')",
                "content": {
                    "application/json": {
                        "examples": {
                            "full": {
                                "summary": "The full map (without delta=1: no 'kind')",
                                "value": ex.NETMAP,
                            },
                            "delta": {
                                "summary": "delta=1 and since=6: what changed since serial 6",
                                "value": ex.NETMAP_DELTA,
                            },
                        }
                    }
                },
            },
            204: {"description": "No newer map before the timeout"},
            **_errors(401, 403, 410, 422, 429),
        },
    )
    async def netmap(
        request: Request,
        node: NodeCaller,
        since: Annotated[
            int, Query(ge=0, le=MAX_ID, description="Serial of the map the caller holds; 0: none")
        ] = 0,
        timeout: Annotated[
            float,
            Query(
                ge=0,
                le=api.NETMAP_MAX_TIMEOUT_S,
                description="Seconds to hold the request when nothing is newer",
            ),
        ] = 0,
        delta: Annotated[
            bool,
            Query(
                description="1: answer a NetMapDelta against `since` when the controller still keeps "
                "that map (else the full map with kind 'full'); 0: always the full map, without 'kind'"
            ),
        ] = False,
        policy: Annotated[
            int | None,
            Query(ge=0, le=MAX_ID, description="The policy version the caller enforces; absent: not said"),
        ] = None,
    ) -> Response:
        """The caller's network map: at once when its serial differs from `since`, otherwise as soon as
        it changes, or 204 after `timeout` seconds. With `delta=1`, only what changed since `since`
        when possible. A node holds at most a few polls: a newer one ends its oldest with 429."""
        # Polls in the form agents send are answered by controller.poll_route.PollFront before they
        # get here; this route documents them and answers the others, with the same MapPolls.
        body = await map_polls.answer(node, since, timeout, delta, policy, request.receive)
        if body is None:
            return Response(status_code=204)
        return ChunkedResponse(body, media_type="application/json")

    @app.post(
        api.LINKS,
        tags=["node"],
        status_code=204,
        response_class=Response,
        responses=_errors(401, 403, 409, 410, 413, 422),
    )
    async def links(
        node: NodeCaller, report: Annotated[LinkReport, Body(openapi_examples=ex.LINK_REPORT)]
    ) -> Response:
        """The caller's measurements of its direct links, one per peer. 409 when a measurement names
        the caller itself, a peer twice, or a node that never was in the mesh."""
        await plane.report(node, report)
        return Response(status_code=204)

    @app.get(
        api.NODES,
        tags=["admin"],
        dependencies=[ADMIN],
        response_model=list[NodeInfo],
        responses={200: {"content": {"application/json": {"example": [ex.NODE_INFO]}}}, **_errors(401, 403)},
    )
    async def list_nodes() -> list[NodeInfo]:
        await plane.caught_up(last_seen=True)
        return plane.node_infos()

    @app.get(
        api.NODES + "/{node_id}",
        tags=["admin"],
        dependencies=[ADMIN],
        response_model=NodeInfo,
        responses={
            200: {"content": {"application/json": {"example": ex.NODE_INFO}}},
            **_errors(401, 403, 404, 422),
        },
    )
    async def show_node(node_id: IdPath) -> NodeInfo:
        await plane.caught_up(last_seen=True)
        return plane.node_info(node_id)

    @app.delete(
        api.NODES + "/{node_id}",
        tags=["admin"],
        dependencies=[ADMIN],
        status_code=204,
        response_class=Response,
        responses=_errors(401, 403, 404, 422),
    )
    async def remove_node(node_id: IdPath) -> Response:
        """Remove a node: it disappears from every peer's map at once, its credential stops working."""
        await plane.remove_node(node_id)
        return Response(status_code=204)

    @app.get(
        api.REMOVED_NODES,
        tags=["admin"],
        dependencies=[ADMIN],
        response_model=list[RemovedNodeInfo],
        responses={
            200: {"content": {"application/json": {"example": [ex.REMOVED_NODE_INFO]}}},
            **_errors(401, 403),
        },
    )
    async def removed_nodes() -> list[RemovedNodeInfo]:
        """Removed nodes: enrollment refuses their keys and their credential gets 410 Gone."""
        return await plane.removed_nodes()

    @app.delete(
        api.REMOVED_NODES + "/{node_id}",
        tags=["admin"],
        dependencies=[ADMIN],
        status_code=204,
        response_class=Response,
        responses=_errors(401, 403, 404, 422),
    )
    async def allow_node(node_id: IdPath) -> Response:
        """Allow a removed node's keys to enroll again (it comes back as a new node)."""
        await plane.allow_node(node_id)
        return Response(status_code=204)

    @app.post(
        api.NODES + "/{node_id}/rotate",
        tags=["admin"],
        dependencies=[ADMIN],
        status_code=202,
        response_model=RotationInfo,
        responses={
            202: {"content": {"application/json": {"example": ex.ROTATION_INFO}}},
            **_errors(401, 403, 404, 409, 422),
        },
    )
    async def rotate_node(node_id: IdPath) -> RotationInfo:
        """Ask the node to rotate its WireGuard key; it does so through its map, without losing a packet.
        409 when it, or a neighbour, already rotates, or a rotate --all runs."""
        return await plane.rotate(node_id)

    @app.post(
        api.ROTATE_ALL,
        tags=["admin"],
        dependencies=[ADMIN],
        status_code=202,
        response_model=RotationProgress,
        responses={
            202: {"content": {"application/json": {"example": ex.ROTATION_PROGRESS}}},
            **_errors(401, 403, 409),
        },
    )
    async def rotate_all() -> RotationProgress:
        """Rotate every node's key, one node at a time. 409 while any rotation runs."""
        return await plane.rotate_all()

    @app.get(
        api.ROTATIONS,
        tags=["admin"],
        dependencies=[ADMIN],
        response_model=RotationProgress,
        responses={
            200: {"content": {"application/json": {"example": ex.ROTATION_PROGRESS}}},
            **_errors(401, 403),
        },
    )
    async def rotations() -> RotationProgress:
        """Every node's key age and rotation, and whether a rotate --all runs."""
        return plane.rotation_progress()

    @app.post(
        api.KEY,
        tags=["node"],
        response_model=KeyReportAnswer,
        responses={
            200: {"content": {"application/json": {"example": ex.KEY_REPORT_ANSWER}}},
            **_errors(401, 403, 409, 410, 413, 422),
        },
    )
    async def key_report(
        node: NodeCaller, report: Annotated[KeyReport, Body(openapi_examples=ex.KEY_REPORT)]
    ) -> KeyReportAnswer:
        """The caller's new WireGuard key during a rotation it was asked for: "prepare" keeps it as
        pending, "commit" (after the switch) records it and pushes every peer's map."""
        return await plane.key_report(node, report)

    @app.post(
        api.PREAUTH_KEYS,
        tags=["admin"],
        dependencies=[ADMIN],
        status_code=201,
        response_model=PreAuthKeyInfo,
        responses={
            201: {"content": {"application/json": {"example": ex.PREAUTH_INFO}}},
            **_errors(401, 403, 422),
        },
    )
    async def create_key(
        req: Annotated[PreAuthKeyRequest, Body(openapi_examples=ex.PREAUTH_REQUEST)],
    ) -> PreAuthKeyInfo:
        """A new pre-auth key; the secret is in this response only."""
        return await plane.create_preauth_key(req)

    @app.get(
        api.PREAUTH_KEYS,
        tags=["admin"],
        dependencies=[ADMIN],
        response_model=list[PreAuthKeyInfo],
        responses={
            200: {"content": {"application/json": {"example": [{**ex.PREAUTH_INFO, "key": None}]}}},
            **_errors(401, 403),
        },
    )
    async def list_keys() -> list[PreAuthKeyInfo]:
        return await plane.preauth_keys()

    @app.delete(
        api.PREAUTH_KEYS + "/{key_id}",
        tags=["admin"],
        dependencies=[ADMIN],
        status_code=204,
        response_class=Response,
        responses=_errors(401, 403, 404, 422),
    )
    async def revoke_key(key_id: KeyIdPath) -> Response:
        """Revoke a pre-auth key (again: no error). Nodes it enrolled stay."""
        await plane.revoke_preauth_key(key_id)
        return Response(status_code=204)

    @app.get(
        api.TOPOLOGY,
        tags=["admin"],
        dependencies=[ADMIN],
        response_model=Topology,
        responses={
            200: {
                "content": {
                    "application/json": {"example": ex.TOPOLOGY},
                    "text/vnd.graphviz": {"example": ex.TOPOLOGY_DOT},
                }
            },
            **_errors(401, 403, 404, 422),
        },
    )
    async def topology(
        format: Annotated[Literal["json", "dot"], Query(description="json, or dot for Graphviz")] = "json",
        source: Annotated[
            int | None,
            Query(ge=1, le=MAX_ID, description="Also the chosen routes of this node; absent: no routes"),
        ] = None,
    ) -> Any:
        """Nodes and up links with their weights; with `source`, that node's chosen routes. Made off the
        event loop: a large mesh never holds up the other requests. Any replica shows what was written
        through any replica before the read."""
        await plane.caught_up(last_seen=True)
        if format == "dot":
            text = await asyncio.to_thread(plane.topology_dot())
            return PlainTextResponse(text, media_type="text/vnd.graphviz")
        body = await asyncio.to_thread(plane.topology(source))
        return Response(body, media_type="application/json")

    documented = app.openapi

    def openapi() -> dict[str, Any]:
        return document_errors(documented())

    app.openapi = openapi  # type: ignore[method-assign]
    add_policy_routes(app, plane, ADMIN, _errors)
    add_audit_routes(app, plane, ADMIN, _errors)
    add_metrics(app, metrics, plane, notifier, ADMIN)
    app.add_middleware(PollFront, polls=map_polls, metrics=metrics)  # outermost: in front of them all
    add_ui_routes(app, plane, ADMIN)
    _literal_paths_win(app.routes)
    return app
