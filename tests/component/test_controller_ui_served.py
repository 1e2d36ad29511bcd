"""The topology page's live data as a browser gets it from a served controller: `wgmesh controller
ui-url` prints a one-time link (never the credential), the link gives a session, and the event stream
sends the view at once and what changed as soon as the mesh changes."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.support import start_controller, ui_delta_applied

# The stream sends a change within a second of it (controller.ui_feed); a read waiting longer than this
# has failed.
EVENT_DEADLINE_S = 2.0


def views(lines: Iterator[str]) -> Iterator[tuple[str, dict]]:
    """(event, the view a page draws): each `view`, and the one before with each `delta` applied."""
    event, view = None, None
    for line in lines:
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: ") and event in ("view", "delta"):
            data = json.loads(line.removeprefix("data: "))
            if event == "delta":
                assert view is not None, "a delta before any view"
                data = ui_delta_applied(view, data)
            view = data
            yield event, data


def test_a_one_time_link_opens_a_session_whose_event_stream_follows_the_mesh(tmp_path: Path):
    served = start_controller(tmp_path / "state")
    try:
        shown = served.cli("controller", "ui-url")
        assert shown.returncode == 0, shown.stderr
        url = shown.stdout.strip()
        assert url.startswith(f"{served.url}/ui/login?ticket=") and len(shown.stdout.splitlines()) == 1
        admin = (served.state_dir / "admin-credential").read_text().strip()
        assert admin not in shown.stdout + shown.stderr
        ca = ssl.create_default_context(cafile=str(served.state_dir / "tls" / "ca.crt"))
        timeout = httpx.Timeout(10.0, read=EVENT_DEADLINE_S)
        with httpx.Client(base_url=served.url, verify=ca, timeout=timeout) as browser:
            r = browser.get(url.removeprefix(served.url))
            assert r.status_code == 303
            cookie = {"Cookie": f"wgmesh_ui={r.cookies['wgmesh_ui']}"}
            assert browser.get(url.removeprefix(served.url)).status_code == 403  # used
            with browser.stream("GET", "/ui/api/events", headers=cookie) as events:
                assert events.headers["content-type"].startswith("text/event-stream")
                stream = views(events.iter_lines())
                kind, first = next(stream)
                assert kind == "view"
                assert first["nodes"] == [] and first["now"] > 0
                key = served.cli("controller", "token", "create").stdout.strip()
                changed = time.monotonic()
                assert served.enroll("watched", key).status_code == 200
                kind, second = next(stream)
                assert kind == "delta"  # only what changed
                print(f"the stream showed the new node {time.monotonic() - changed:.2f} s after enrolling")
                assert [n["name"] for n in second["nodes"]] == ["watched"]
                assert second["version"] > first["version"]
    finally:
        served.stop()
