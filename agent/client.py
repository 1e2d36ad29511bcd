"""The agent's side of the controller protocol (wire/api.py) over httpx.

The transport is injected: production uses httpx's default (real sockets), component tests pass
`httpx.ASGITransport(create_app(...))` and run agents and controller in one process.

The controller may be several replicas (agent.targets): a comma-separated list of URLs, or a name
with several addresses. A call goes to the replica in use; when that one does not answer (no
connection, a timeout, a 5xx) the call is tried at once on the next, each once, and the replica that
answered stays in use. Every call here is safe to repeat (a poll, a link report, an enrollment with the
same identity key). `ControllerUnreachable` means no replica answered.

Errors are split by what the agent should do about them:
- `ControllerUnreachable`: no answer, a timeout, or a 5xx; the agent retries with backoff.
- `ControllerRejected`: a 4xx; retrying the same request will not help (bad pre-auth key, credential
  refused). `status` says which, `detail` is the controller's one-line reason.
Secrets (pre-auth key, node credential) go in bodies and headers only, never in URLs or error texts.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from agent.targets import Target, Targets
from wgmesh.neterror import describe
from wire import PROTOCOL_VERSION, api
from wire.models import (
    EnrollNonce,
    EnrollRequest,
    EnrollResponse,
    LinkReport,
    NetMap,
    NetMapDelta,
    NetMapUpdate,
)
from wire.rotation import KeyReport, KeyReportAnswer

CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 10.0
# A long poll may hold the request for `timeout` seconds; allow this much on top before giving up.
LONG_POLL_GRACE_S = 10.0

M = TypeVar("M", bound=BaseModel)
_UPDATE: TypeAdapter[NetMap | NetMapDelta] = TypeAdapter(NetMapUpdate)


class ControllerError(RuntimeError):
    """A controller call failed; the message is one line an operator can act on."""


class ControllerUnreachable(ControllerError):
    pass


class ControllerRejected(ControllerError):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"controller refused the request ({status}): {detail}")
        self.status = status
        self.detail = detail


class ControllerClient:
    """Calls to one controller (one or several replicas). `credential` is the node credential (None
    before enrollment)."""

    def __init__(
        self,
        base_url: str,
        *,
        credential: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        targets: Targets | None = None,
        verify: ssl.SSLContext | bool = True,
        on_target: Callable[[str], None] | None = None,
    ) -> None:
        """`on_target(label)`: called when a request goes to another replica than the last one did."""
        self.targets = targets or Targets(base_url, resolve=transport is None)
        self._on_target = on_target
        self._last_target: str | None = None
        self._credential = credential
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            headers={"User-Agent": f"wgmesh-agent/{PROTOCOL_VERSION}"},
            follow_redirects=False,
            verify=verify,
        )

    @property
    def base_url(self) -> str:
        """The replica in use."""
        return self.targets.current.label

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> ControllerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- calls --------------------------------------------------------------------------------------

    async def enroll_nonce(self) -> EnrollNonce:
        response = await self._call("POST", api.ENROLL_NONCE, auth=False)
        return self._parse(response, EnrollNonce)

    async def enroll(self, request: EnrollRequest) -> EnrollResponse:
        response = await self._call("POST", api.ENROLL, json=request.model_dump(mode="json"), auth=False)
        return self._parse(response, EnrollResponse)

    async def netmap(self, since: int, timeout_s: float) -> NetMap | None:
        """The node's map if its serial is above `since`, waiting up to `timeout_s`; None when nothing
        newer came within the wait (204)."""
        response = await self._poll(since, timeout_s, {})
        if response is None:
            return None
        return self._parse(response, NetMap)

    async def netmap_update(
        self, since: int, timeout_s: float, policy_version: int | None = None
    ) -> NetMap | NetMapDelta | None:
        """As `netmap`, asking for a delta against map `since` (`delta=1`): a NetMapDelta to apply to
        that map, or the full map when the controller cannot diff from it (or predates deltas).
        `policy_version`: the policy version this host enforces, reported back (None: none)."""
        extra = {"delta": "1"}
        if policy_version is not None:
            extra["policy"] = str(policy_version)
        response = await self._poll(since, timeout_s, extra)
        if response is None:
            return None
        try:
            return _UPDATE.validate_json(response.content)
        except ValidationError as e:
            raise ControllerUnreachable(
                f"controller {self.base_url} sent a network map this agent cannot read "
                f"({e.error_count()} errors; protocol version {PROTOCOL_VERSION} here)"
            ) from None

    async def _poll(self, since: int, timeout_s: float, extra: dict[str, str]) -> httpx.Response | None:
        wait = max(0, min(int(timeout_s), api.NETMAP_MAX_TIMEOUT_S))
        response = await self._call(
            "GET",
            api.NETMAP,
            params={"since": str(since), "timeout": str(wait), **extra},
            timeout=httpx.Timeout(wait + LONG_POLL_GRACE_S, connect=CONNECT_TIMEOUT_S),
        )
        return None if response.status_code == 204 else response

    async def report_links(self, report: LinkReport) -> None:
        await self._call("POST", api.LINKS, json=report.model_dump(mode="json"))

    async def report_key(self, report: KeyReport) -> KeyReportAnswer:
        """A key rotation's report (wire.rotation.KeyReport). ControllerRejected (409) when the
        controller has no such rotation under way."""
        response = await self._call("POST", api.KEY, json=report.model_dump(mode="json"))
        return self._parse(response, KeyReportAnswer)

    # --- plumbing -----------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        auth: bool = True,
        json: Any = None,
        params: dict[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        headers = {}
        if auth:
            if self._credential is None:
                raise ControllerError("this node has no credential yet: enroll first")
            headers["Authorization"] = f"Bearer {self._credential}"
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        order = await self.targets.aorder()
        problems: list[str] = []
        for target in order:
            if self._on_target is not None and target.label != self._last_target:
                self._last_target = target.label
                self._on_target(target.label)
            try:
                response = await self._send(target, method, path, json, params, headers, extra)
            except ControllerUnreachable as e:
                problems.append(str(e))
                self.targets.failed(target)
                continue
            return self._check(response)
        self.targets.all_failed()
        if len(problems) == 1:
            raise ControllerUnreachable(problems[0])
        raise ControllerUnreachable(f"no controller replica answered: {'; '.join(problems)}")

    async def _send(
        self,
        target: Target,
        method: str,
        path: str,
        json: Any,
        params: dict[str, str] | None,
        headers: dict[str, str],
        extra: dict[str, Any],
    ) -> httpx.Response:
        if target.host_header:
            headers = {**headers, "Host": target.host_header}
        if target.sni_hostname:
            extra = {**extra, "extensions": {"sni_hostname": target.sni_hostname}}
        try:
            response = await self._http.request(
                method, target.url + path, json=json, params=params, headers=headers, **extra
            )
        except httpx.TimeoutException:
            raise ControllerUnreachable(f"controller {target.label} did not answer in time") from None
        except httpx.HTTPError as e:
            raise ControllerUnreachable(f"cannot reach controller {target.label}: {describe(e)}") from None
        if response.status_code >= 500:
            raise ControllerUnreachable(
                f"controller {target.label} failed ({response.status_code}): {_detail(response)}"
            )
        return response

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            raise ControllerRejected(response.status_code, _detail(response))
        if 300 <= response.status_code < 400:
            raise ControllerRejected(
                response.status_code, f"redirected to {response.headers.get('location', '?')}"
            )
        return response

    def _parse(self, response: httpx.Response, model: type[M]) -> M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as e:
            raise ControllerUnreachable(
                f"controller {self.base_url} sent a {model.__name__} this agent cannot read "
                f"({e.error_count()} errors; protocol version {PROTOCOL_VERSION} here)"
            ) from None


def _detail(response: httpx.Response) -> str:
    """The controller's one-line reason: ErrorBody.detail when present, else the status phrase."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.reason_phrase or "no reason given"
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        # FastAPI's validation error list: name the first field
        first = detail[0]
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return f"{loc}: {first.get('msg', 'invalid')}" if loc else str(first.get("msg", "invalid"))
    return response.reason_phrase or "no reason given"
