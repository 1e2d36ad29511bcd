"""The live topology page at /ui/ for admins: login, the page and its files, and its data (a JSON view
and a stream of server-sent events with the view whenever it changes).

Browser authentication (the admin credential never goes into a URL, a cookie or a log):
- `wgmesh controller ui-url` asks POST /v1/ui/tickets with the admin credential for a ticket: single
  use, valid TICKET_TTL_S, kept in this replica's memory. It prints /ui/login?ticket=T on that replica.
- GET /ui/login?ticket=T trades the ticket for a session cookie; so does the login form (POST
  /ui/login with the admin credential). The cookie is HttpOnly, SameSite=Strict, Secure over https,
  limited to /ui, valid SESSION_TTL_S: an expiry and an HMAC under a key made at start-up, so a restart
  (or another replica) asks for a new login and nothing about sessions is stored.
- Everything under /ui/ but the login and the static files needs the session; the data routes answer
  401 JSON without one, the page answers with the login form.
- The event stream looks at the shared view (controller.ui_feed: computed again only when the plane
  changed, once for every browser) every POLL_S and, when it differs, sends what changed (`delta`, after
  the view before it) or the whole `view` (first, or after a view it did not send): the page follows a
  change within a second. A comment every KEEPALIVE_S otherwise; it ends when the session expires.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import secrets
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from fastapi import Request, Response
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse

from controller.audit import ADMIN
from controller.ui_feed import ViewFeed
from controller.ui_view import LastMeasured, mesh_view
from wire import api
from wire.ui import UiTicket

if TYPE_CHECKING:
    from fastapi import FastAPI
    from fastapi.params import Depends

    from controller.audited import AuditedControlPlane

UI = "/ui"
COOKIE = "wgmesh_ui"
TICKET_TTL_S = 60.0
SESSION_TTL_S = 12 * 3600.0
MAX_TICKETS = 1000
POLL_S = 0.25
KEEPALIVE_S = 15.0
STATIC_FILES = {
    "topology.js": "text/javascript",
    "topology.css": "text/css",
}
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # Everything the page uses comes from this controller; no inline script.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'",
}


def _static(name: str) -> bytes:
    return resources.files("controller").joinpath("ui_static", name).read_bytes()


class UiSessions:
    """Login tickets (in memory, single use) and stateless signed session cookies."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._key = secrets.token_bytes(32)
        self._tickets: dict[str, float] = {}  # sha256 of the ticket -> expiry

    def issue_ticket(self) -> str:
        now = self.clock()
        self._tickets = {t: exp for t, exp in self._tickets.items() if exp > now}
        if len(self._tickets) >= MAX_TICKETS:
            oldest = min(self._tickets, key=self._tickets.__getitem__)
            del self._tickets[oldest]
        ticket = secrets.token_urlsafe(24)
        self._tickets[_digest(ticket)] = now + TICKET_TTL_S
        return ticket

    def take_ticket(self, ticket: str) -> bool:
        expiry = self._tickets.pop(_digest(ticket), None)
        return expiry is not None and expiry > self.clock()

    def new_session(self) -> str:
        expiry = int(self.clock() + SESSION_TTL_S)
        body = f"{expiry}.{secrets.token_urlsafe(12)}"
        return f"{body}.{self._sign(body)}"

    def session_expiry(self, cookie: str | None) -> float | None:
        """When the session in `cookie` ends; None when there is none, it is forged, or it ended."""
        if not cookie:
            return None
        body, _, signature = cookie.rpartition(".")
        expiry_text = body.partition(".")[0]
        if not (body and expiry_text.isascii() and expiry_text.isdigit()):
            return None
        if not hmac.compare_digest(signature.encode(), self._sign(body).encode()):
            return None
        expiry = float(expiry_text)
        return expiry if expiry > self.clock() else None

    def _sign(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()


def _digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


def _page(title: str, body: str, status: int = 200) -> Response:
    text = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        f'<link rel=stylesheet href="{UI}/static/topology.css"></head><body>{body}</body></html>'
    )
    return Response(text, status_code=status, media_type="text/html", headers=_SECURITY_HEADERS)


def _login_page(message: str = "", status: int = 200) -> Response:
    note = f"<p class=error role=alert>{html.escape(message)}</p>" if message else ""
    return _page(
        "wgmesh: log in",
        "<main class=login><h1>wgmesh topology</h1>"
        f"{note}"
        f'<form method=post action="{UI}/login">'
        "<label for=credential>Admin credential</label>"
        "<input id=credential name=credential type=password autocomplete=off required autofocus>"
        "<button type=submit>Log in</button></form>"
        "<p class=hint>Or open the one-time link <code>wgmesh controller ui-url</code> prints.</p></main>",
        status,
    )


def _topology_page() -> Response:
    return _page(
        "wgmesh topology",
        "<header><h1>wgmesh topology</h1><span id=live class=stale>connecting</span>"
        f'<form method=post action="{UI}/logout"><button type=submit>Log out</button></form></header>'
        "<main><svg id=graph role=img aria-label='mesh topology' viewBox='0 0 640 640'></svg>"
        "<aside><section><h2>Legend</h2><ul class=legend>"
        "<li><span class='swatch ok'></span>RTT &lt; 50 ms</li>"
        "<li><span class='swatch slow'></span>RTT &ge; 50 ms</li>"
        "<li><span class='swatch lossy'></span>loss</li>"
        "<li><span class='swatch down'></span>down</li>"
        "<li><span class='swatch relay'></span>relayed route</li></ul></section>"
        "<section><h2>Relayed routes</h2><ul id=relayed></ul></section>"
        "<section><h2>Nodes</h2><table id=nodes><thead><tr><th>name</th><th>address</th>"
        "<th>key age</th><th>last poll</th></tr></thead><tbody></tbody></table></section>"
        "<section><h2>Links</h2><table id=links><thead><tr><th>link</th><th>state</th><th>RTT</th>"
        "<th>loss</th></tr></thead><tbody></tbody></table></section></aside></main>"
        f'<script src="{UI}/static/topology.js"></script>',
    )


def add_ui_routes(app: FastAPI, plane: AuditedControlPlane, admin: Depends) -> UiSessions:
    """Register the page, its login, data and files, and the ticket route (admin credential). Logins
    and refused logins go into the audit trail."""
    sessions = UiSessions()
    app.state.ui_sessions = sessions

    def signed_in(request: Request) -> float | None:
        return sessions.session_expiry(request.cookies.get(COOKIE))

    def start_session(request: Request, how: str) -> Response:
        plane.audit.record("ui.login", "ok", ADMIN, detail=f"topology page session started ({how})")
        response = RedirectResponse(f"{UI}/", status_code=303, headers=_SECURITY_HEADERS)
        response.set_cookie(
            COOKIE,
            sessions.new_session(),
            max_age=int(SESSION_TTL_S),
            path=UI,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @app.post(
        api.UI_TICKETS,
        tags=["admin"],
        dependencies=[admin],
        status_code=201,
        response_model=UiTicket,
        responses={
            201: {
                "content": {
                    "application/json": {
                        "example": {"path": "/ui/login?ticket=3q2-7wAAb8s0", "expires_in_s": TICKET_TTL_S}
                    }
                }
            },
            401: {"description": "missing or unknown credential"},
            403: {"description": "a node credential, not the admin credential"},
        },
    )
    async def ui_ticket() -> UiTicket:
        """A single-use login link to the topology page, for a browser (`wgmesh controller ui-url`)."""
        ticket = sessions.issue_ticket()
        return UiTicket(path=f"{UI}/login?ticket={ticket}", expires_in_s=TICKET_TTL_S)

    @app.get(UI, include_in_schema=False)
    async def ui_root() -> Response:
        return RedirectResponse(f"{UI}/", status_code=308)

    @app.get(UI + "/", include_in_schema=False)
    async def ui_page(request: Request) -> Response:
        return _topology_page() if signed_in(request) else _login_page()

    @app.get(UI + "/login", include_in_schema=False)
    async def ui_login_link(request: Request, ticket: str = "") -> Response:
        if not ticket:
            return _login_page()
        if not sessions.take_ticket(ticket[:200]):
            plane.admin_refused("topology page: a login link that was used already or has expired")
            return _login_page(
                "This login link was used already or has expired: run `wgmesh controller ui-url` for a new one.",
                status=403,
            )
        return start_session(request, "one-time link")

    @app.post(UI + "/login", include_in_schema=False)
    async def ui_login_form(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", errors="replace"), max_num_fields=4)
        credential = (form.get("credential") or [""])[0].strip()
        if not credential or not plane.is_admin(credential):
            plane.admin_refused("topology page: the login form got a wrong admin credential")
            return _login_page("That is not the admin credential of this controller.", status=401)
        return start_session(request, "login form")

    @app.post(UI + "/logout", include_in_schema=False)
    async def ui_logout() -> Response:
        response = RedirectResponse(f"{UI}/", status_code=303, headers=_SECURITY_HEADERS)
        response.delete_cookie(COOKIE, path=UI, httponly=True, samesite="strict")
        return response

    @app.get(UI + "/static/{name}", include_in_schema=False)
    async def ui_static(name: str) -> Response:
        kind = STATIC_FILES.get(name)
        if kind is None:
            return JSONResponse({"detail": f"no file {name!r} here"}, status_code=404)
        return Response(_static(name), media_type=kind, headers={"X-Content-Type-Options": "nosniff"})

    last_measured = LastMeasured()

    def view() -> dict[str, Any]:
        shown = mesh_view(plane)
        last_measured.fill(shown["links"])
        return shown

    feed = ViewFeed(plane, view)
    app.state.ui_feed = feed

    def now() -> float:
        return plane.clock.now().timestamp()

    def unauthorized() -> JSONResponse:
        return JSONResponse({"detail": "log in at /ui/ first (session missing or expired)"}, status_code=401)

    @app.get(UI + "/api/view", include_in_schema=False)
    async def ui_view(request: Request) -> Response:
        if not signed_in(request):
            return unauthorized()
        text = _stamped(feed.current(fresh=True)[1], now())
        return Response(text, media_type="application/json", headers={"Cache-Control": "no-store"})

    @app.get(UI + "/api/events", include_in_schema=False)
    async def ui_events(request: Request) -> Response:
        expiry = signed_in(request)
        if not expiry:
            return unauthorized()
        return StreamingResponse(
            _events(request, feed, now, expiry, sessions.clock),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return sessions


async def _events(
    request: Request,
    feed: ViewFeed,
    now: Callable[[], float],
    expiry: float,
    clock: Callable[[], float],
) -> AsyncIterator[bytes]:
    """The view now, then what changed each time it changes (a delta after the view before, else the
    view; each with the controller's time, for ages); a comment now and then keeps proxies patient."""
    sent, last = 0, ""
    quiet_since = time.monotonic()
    yield b"retry: 1000\n\n"
    while clock() < expiry:
        if await request.is_disconnected():
            return
        serial, text = feed.current()
        if serial != sent and text != last:
            change = feed.delta_text(serial) if last and serial == sent + 1 else None
            last = text
            quiet_since = time.monotonic()
            if change is None:
                yield f"event: view\ndata: {_stamped(text, now())}\n\n".encode()
            else:
                yield f"event: delta\ndata: {_stamped(change, now())}\n\n".encode()
        elif time.monotonic() - quiet_since >= KEEPALIVE_S:
            quiet_since = time.monotonic()
            yield b": still here\n\n"
        sent = serial
        await asyncio.sleep(POLL_S)
    yield b"event: expired\ndata: {}\n\n"


def _stamped(view_text: str, now: float) -> str:
    """The view's JSON object with the controller's time first (for the ages the page shows)."""
    return f'{{"now":{now:.1f},{view_text[1:]}'
