"""The topology page's server side: a browser logs in with a one-time link or the admin credential and
gets an HttpOnly session cookie (never the credential), the page and its data need that session, and
the view says which links are down and which routes are relayed."""

from __future__ import annotations

import json
import re

from controller.ui_feed import MIN_GAP_S, SEEN_EVERY_S
from tests.support import ControllerHarness, ui_delta_applied
from wire import api


async def login_link(controller: ControllerHarness) -> str:
    r = await controller.client.post(api.UI_TICKETS, headers=controller.admin)
    assert r.status_code == 201, r.text
    assert r.json()["expires_in_s"] == 60
    return str(r.json()["path"])


def cookie_header(value: str | None) -> dict[str, str]:
    return {"Cookie": f"wgmesh_ui={value}"}


async def session(controller: ControllerHarness) -> dict[str, str]:
    """The Cookie header of a browser that opened a login link."""
    r = await controller.client.get(await login_link(controller))
    assert r.status_code == 303 and r.headers["location"] == "/ui/"
    return cookie_header(r.cookies.get("wgmesh_ui"))


async def test_without_a_session_the_page_is_a_login_form_and_the_data_is_refused(
    controller: ControllerHarness,
):
    r = await controller.client.get("/ui/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<form method=post action="/ui/login">' in r.text and "type=password" in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    for path in ("/ui/api/view", "/ui/api/events"):
        r = await controller.client.get(path)
        assert r.status_code == 401 and "log in" in r.json()["detail"]
    assert (await controller.client.get("/ui", follow_redirects=False)).headers["location"] == "/ui/"


async def test_a_login_link_works_once_and_sets_an_http_only_cookie(controller: ControllerHarness):
    host = await controller.enroll()
    assert (await controller.client.post(api.UI_TICKETS)).status_code == 401
    assert (await controller.client.post(api.UI_TICKETS, headers=host.auth)).status_code == 403
    link = await login_link(controller)
    assert re.fullmatch(r"/ui/login\?ticket=[A-Za-z0-9_-]{20,}", link)
    r = await controller.client.get(link)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("wgmesh_ui=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Path=/ui" in cookie
    admin = controller.admin["Authorization"].removeprefix("Bearer ")
    assert admin not in cookie and admin not in link
    again = await controller.client.get(link)
    assert again.status_code == 403 and "used already or has expired" in again.text
    page = await controller.client.get("/ui/", headers=cookie_header(r.cookies.get("wgmesh_ui")))
    assert page.status_code == 200 and "<svg id=graph" in page.text
    assert '<script src="/ui/static/topology.js"></script>' in page.text


async def test_the_login_form_takes_only_the_admin_credential(controller: ControllerHarness):
    host = await controller.enroll()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for wrong in ("credential=nope", f"credential={host.credential}", "", "credential="):
        r = await controller.client.post("/ui/login", content=wrong, headers=form)
        assert r.status_code == 401 and "not the admin credential" in r.text
        assert "set-cookie" not in r.headers
    admin = controller.admin["Authorization"].removeprefix("Bearer ")
    r = await controller.client.post("/ui/login", content=f"credential={admin}", headers=form)
    assert r.status_code == 303 and r.cookies.get("wgmesh_ui")
    view = await controller.client.get("/ui/api/view", headers=cookie_header(r.cookies.get("wgmesh_ui")))
    assert view.status_code == 200


async def test_a_forged_or_tampered_cookie_is_refused(controller: ControllerHarness):
    good = (await session(controller))["Cookie"].removeprefix("wgmesh_ui=")
    assert (await controller.client.get("/ui/api/view", headers=cookie_header(good))).status_code == 200
    expiry, nonce, signature = good.split(".")
    for forged in (f"{int(expiry) + 3600}.{nonce}.{signature}", f"{expiry}.{nonce}.{'0' * 64}", "x", ""):
        r = await controller.client.get("/ui/api/view", headers=cookie_header(forged))
        assert r.status_code == 401


async def test_the_view_shows_nodes_a_down_link_and_the_relayed_route(controller: ControllerHarness):
    a, b, c = [await controller.enroll() for _ in range(3)]
    cookie = await session(controller)
    for x, y in ((a, b), (a, c), (b, c)):
        await controller.report(x, {"peer_id": y.node_id, "rtt_ms": 4.0, "loss": 0.0, "handshake_age_s": 3})
    view = (await controller.client.get("/ui/api/view", headers=cookie)).json()
    assert [n["name"] for n in view["nodes"]] == [a.name, b.name, c.name]
    assert all(n["key_created_at"] and n["address"] for n in view["nodes"])
    assert {(lk["a"], lk["b"]): lk["health"] for lk in view["links"]} == {
        (a.node_id, b.node_id): "ok",
        (a.node_id, c.node_id): "ok",
        (b.node_id, c.node_id): "ok",
    }
    assert view["relayed"] == [] and view["relayed_total"] == 0
    await controller.report(a, {"peer_id": b.node_id, "loss": 1.0, "handshake_age_s": 200})
    view = (await controller.client.get("/ui/api/view", headers=cookie)).json()
    down = next(lk for lk in view["links"] if (lk["a"], lk["b"]) == (a.node_id, b.node_id))
    assert down["health"] == "down" and down["up"] is False and down["down_since"]
    assert sorted([a.name, b.name]) == [a.name, b.name]
    assert view["relayed"] == [
        {
            "source": a.node_id,
            "destination": b.node_id,
            "path": [a.node_id, c.node_id, b.node_id],
            "text": f"{a.name} ↔ {b.name} via {c.name}",
        }
    ]
    relay = next(n for n in view["nodes"] if n["id"] == c.node_id)
    assert relay["relays"] is True


async def test_the_page_files_are_served_from_the_package(controller: ControllerHarness):
    js = await controller.client.get("/ui/static/topology.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert 'new EventSource("/ui/api/events")' in js.text
    css = await controller.client.get("/ui/static/topology.css")
    assert css.status_code == 200 and ".link.down" in css.text
    missing = await controller.client.get("/ui/static/..%2Fcontrol.py")
    assert missing.status_code == 404


async def test_logins_and_refused_logins_are_in_the_audit_trail(controller: ControllerHarness):
    link = await login_link(controller)
    assert (await controller.client.get(link)).status_code == 303
    assert (await controller.client.get(link)).status_code == 403
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert (
        await controller.client.post("/ui/login", content="credential=guess", headers=form)
    ).status_code == 401
    r = await controller.client.get(api.AUDIT, headers=controller.admin)
    trail = [(e["action"], e["result"], e["detail"]) for e in r.json()]
    assert ("ui.login", "ok", "topology page session started (one-time link)") in trail
    refused = [d for action, result, d in trail if (action, result) == ("admin.auth", "refused")]
    assert any("login link that was used already" in d for d in refused)
    assert any("login form got a wrong admin credential" in d for d in refused)
    assert all("guess" not in d for _, _, d in trail)


async def test_a_link_routed_around_keeps_showing_what_it_measured_before(controller: ControllerHarness):
    a, b, c = [await controller.enroll() for _ in range(3)]
    cookie = await session(controller)
    for x, y, rtt in ((a, b, 120.0), (a, c, 5.0), (c, b, 5.0), (b, a, 120.0)):
        await controller.report(x, {"peer_id": y.node_id, "rtt_ms": rtt, "loss": 0.0, "handshake_age_s": 3})
    view = (await controller.client.get("/ui/api/view", headers=cookie)).json()
    slow = next(lk for lk in view["links"] if (lk["a"], lk["b"]) == (a.node_id, b.node_id))
    assert slow["health"] == "slow" and not slow["carries_routes"] and "earlier" not in slow
    # routed through c, the agents' probes of b go through the relay: nothing about the direct link
    for x, y in ((a, b), (b, a)):
        await controller.report(x, {"peer_id": y.node_id, "handshake_age_s": 3})
    view = (await controller.client.get("/ui/api/view", headers=cookie)).json()
    slow = next(lk for lk in view["links"] if (lk["a"], lk["b"]) == (a.node_id, b.node_id))
    assert slow["earlier"] is True and slow["rtt_ms"] is not None and slow["rtt_ms"] >= 50
    assert slow["health"] == "slow"
    assert [r["text"] for r in view["relayed"]] == [f"{a.name} ↔ {b.name} via {c.name}"]


async def test_every_browser_shares_one_view_made_again_only_when_the_mesh_changes(
    controller: ControllerHarness,
):
    a, b = [await controller.enroll() for _ in range(2)]
    feed = controller.app.state.ui_feed
    t = [1000.0]
    feed.clock = lambda: t[0]

    def rtt_shown() -> float | None:
        links = json.loads(feed.current()[1])["links"]
        return next((lk["rtt_ms"] for lk in links), None)

    first = feed.current()
    for _ in range(40):  # 5 browsers for 2 s of a still mesh: what the first one got, made once
        t[0] += 0.25
        assert feed.current() == first
    await controller.report(a, {"peer_id": b.node_id, "rtt_ms": 4.0, "loss": 0.0, "handshake_age_s": 3})
    assert rtt_shown() == 4.0 and feed.current()[0] == first[0] + 1
    # what a stream that sent the first view gets: only the link that changed
    change = json.loads(feed.delta_text(first[0] + 1))
    assert change["nodes"] == [] and [lk["rtt_ms"] for lk in change["links"]] == [4.0]
    assert ui_delta_applied(json.loads(first[1]), change) == json.loads(feed.current()[1])
    assert feed.delta_text(first[0]) is None  # not the current view: a stream that far behind gets it whole
    # a burst of changes makes one view per MIN_GAP_S, the last one shown when it is due
    await controller.report(a, {"peer_id": b.node_id, "rtt_ms": 8.0, "loss": 0.0, "handshake_age_s": 3})
    await controller.report(a, {"peer_id": b.node_id, "rtt_ms": 8.0, "loss": 0.0, "handshake_age_s": 3})
    assert rtt_shown() == 4.0
    t[0] += MIN_GAP_S
    shown = rtt_shown()
    assert shown is not None and shown > 4.0 and feed.current()[0] == first[0] + 2
    # polls move only `last_seen`: shown when SEEN_EVERY_S has passed, not at once
    await controller.netmap(a)
    t[0] += MIN_GAP_S
    assert json.loads(feed.current()[1])["nodes"][0]["last_seen"] is None
    t[0] += SEEN_EVERY_S
    assert json.loads(feed.current()[1])["nodes"][0]["last_seen"] is not None
    # a single answer (GET /ui/api/view) is made whenever the mesh moved
    await controller.netmap(b)
    cookie = await session(controller)
    view = (await controller.client.get("/ui/api/view", headers=cookie)).json()
    assert all(n["last_seen"] is not None for n in view["nodes"])
