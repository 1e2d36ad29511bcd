"""The baseline of bench.ui_watch: the topology page's event stream as it was before controller.ui_feed,
served beside the real one at /bench/ui-polled-events (no session: the bench's controller listens on
loopback only). Every stream looked every controller.ui.POLL_S and the streams of an app shared one
computation of the view per half poll, whether or not anything had changed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import Request, Response
from fastapi.responses import StreamingResponse

from controller.ui import POLL_S
from controller.ui_view import LastMeasured, mesh_view

if TYPE_CHECKING:
    from fastapi import FastAPI

PATH = "/bench/ui-polled-events"


def add_polled_events(app: FastAPI) -> None:
    plane = app.state.plane
    last_measured = LastMeasured()
    shared: list[tuple[float, str]] = []  # (monotonic time, view text)

    def view_text() -> str:
        t = time.monotonic()
        if not shared or t - shared[0][0] >= POLL_S / 2:
            shown: dict[str, Any] = mesh_view(plane)
            last_measured.fill(shown["links"])
            shared[:] = [(t, json.dumps(shown, separators=(",", ":")))]
        return shared[0][1]

    async def events(request: Request) -> AsyncIterator[bytes]:
        last = ""
        while not await request.is_disconnected():
            text = view_text()
            if text != last:
                last = text
                now = plane.clock.now().timestamp()
                yield f'event: view\ndata: {{"now":{now:.1f},{text[1:]}\n\n'.encode()
            await asyncio.sleep(POLL_S)

    @app.get(PATH, include_in_schema=False)
    async def polled_events(request: Request) -> Response:
        return StreamingResponse(events(request), media_type="text/event-stream")
