"""GET /v1/netmap, the long-poll every agent holds: what it answers (`MapPolls`), and the plain-ASGI
front door (`PollFront`) that serves the polls agents send without FastAPI.

At 5,000 agents one change is 5,000 answers and 5,000 new polls, so what the controller spends per poll
is what a change costs it. Through FastAPI a poll paid for the middleware layers, the route table,
dependency resolution, pydantic's query validation and a Request object: 37% of the push CPU. The front
door sits in front of all of it and takes a poll in the form agents send: `since`, `timeout`, `delta`
and `policy` as plain decimals (`delta` 0, 1, true or false), each at most once, no body. It hands any
other request to the app: another path or method, a query in another form, a request with a body. The
route declared in controller.app documents the API and answers those, its validation errors included;
both run `MapPolls.answer`, so there is one poll logic.

Rules kept from the app: the credential is checked before anything else is answered
(controller.auth.node_of_credential: 401, 403, 410), errors are `{"detail": ...}` JSON (a 401 with
`WWW-Authenticate: Bearer`), refusals are counted and push clocks stopped as MetricsMiddleware does,
and a map goes out in chunks (controller.chunked).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import JSONResponse

from controller.audited import AuditedControlPlane
from controller.auth import bearer_credential, node_of_credential
from controller.chunked import send_body
from controller.control import ApiError, database_unreachable
from controller.longpoll import PollEnded, PollSlots
from controller.metrics import ControllerMetrics, refusal_reason
from controller.store import StoreUnavailable
from wire import api

MAX_ID = 2**62
"""The largest id or serial a request may name."""
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

_DIGITS = re.compile(rb"[0-9]{1,19}")
_SECONDS = re.compile(rb"[0-9]{1,6}(?:\.[0-9]{1,9})?")
_BOOLS = {b"1": True, b"true": True, b"0": False, b"false": False}
Poll = tuple[int, float, bool, int | None]


class MapPolls:
    """What a poll of GET /v1/netmap is answered."""

    def __init__(self, plane: AuditedControlPlane, slots: PollSlots) -> None:
        self.plane = plane
        self.slots = slots

    async def answer(
        self, node: int, since: int, timeout: float, delta: bool, policy: int | None, receive: Receive
    ) -> bytes | None:
        """The map (or, with `delta`, the delta from `since`) once it differs from `since`, waiting up
        to `timeout` seconds; None: nothing newer (204). ApiError 429 (a newer poll of the node took
        this one's place), 503 (no database), 410 (the node was removed)."""
        plane = self.plane
        plane.polled(node, since, policy)
        if timeout > 0 and self._unchanged(node, since):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while self._unchanged(node, since):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                try:
                    await self.slots.wait(node, receive, remaining)
                except PollEnded as e:
                    if e.evicted:
                        raise ApiError(
                            429, f"node {node} holds too many polls; this one was the oldest"
                        ) from None
                    return None  # nobody reads it
        if self._unchanged(node, since):
            return None
        problem = plane.health()
        if problem is not None:
            raise database_unreachable(problem)
        if not plane.has_node(node):
            raise ApiError(410, f"node {node} was removed from the mesh")
        return plane.netmap_update_json(node, since) if delta else plane.netmap_json(node)

    def _unchanged(self, node: int, since: int) -> bool:
        plane = self.plane
        return plane.health() is None and plane.has_node(node) and plane.serial(node) == since


def plain_poll(query: bytes) -> Poll | None:
    """(since, timeout, delta, policy) of a query in the plain form agents send; None: any other form
    (the app then parses it, and says what is wrong with it)."""
    since, timeout, delta, policy = 0, 0.0, False, None
    seen: set[bytes] = set()
    for pair in query.split(b"&"):
        if not pair:
            continue
        name, _, value = pair.partition(b"=")
        if name in seen or b"%" in name or b"+" in name:
            return None
        seen.add(name)
        if name == b"since" or name == b"policy":
            if not _DIGITS.fullmatch(value) or int(value) > MAX_ID:
                return None
            if name == b"since":
                since = int(value)
            else:
                policy = int(value)
        elif name == b"timeout":
            if not _SECONDS.fullmatch(value) or float(value) > api.NETMAP_MAX_TIMEOUT_S:
                return None
            timeout = float(value)
        elif name == b"delta":
            flag = _BOOLS.get(value)
            if flag is None:
                return None
            delta = flag
    return since, timeout, delta, policy


class PollFront:
    """ASGI middleware: serves GET /v1/netmap in the plain form itself, passes everything else on."""

    def __init__(self, app: App, polls: MapPolls, metrics: ControllerMetrics) -> None:
        self.app = app
        self.polls = polls
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != api.NETMAP or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        authorization = ""
        for name, value in scope["headers"]:
            if name == b"authorization":
                if not authorization:
                    authorization = value.decode("latin-1")
            elif name == b"content-length" or name == b"transfer-encoding":
                await self.app(scope, receive, send)  # a body: the app's limits apply
                return
        poll = plain_poll(scope["query_string"])
        if poll is None:
            await self.app(scope, receive, send)
            return
        try:
            node = await node_of_credential(self.polls.plane, bearer_credential(authorization))
            body = await self.polls.answer(node, *poll, receive)
        except (ApiError, StoreUnavailable) as e:
            refusal = e if isinstance(e, ApiError) else database_unreachable(e)
            await self._refuse(scope, receive, send, refusal.status, refusal.detail)
            return
        if body is None:
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        self.metrics.map_sent(node)
        headers = [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send_body(send, body)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        self.metrics.refused.labels(refusal_reason(status)).inc()
        await JSONResponse({"detail": detail}, status_code=status, headers=headers)(scope, receive, send)
