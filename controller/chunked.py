"""Answers sent in chunks: a large body (a full map is about 1.9 MB at 5,000 nodes) goes to the server
CHUNK bytes at a time.

Why: uvicorn hands each ASGI body message to the transport whole, and asyncio's TLS layer encrypts a
whole write into a per-connection memory buffer that keeps the size of the largest write it ever held
for as long as the connection lives. One full map written at once costs each connection that got one
a full map's size of memory for good (about 9.5 GB for 5,000 agents); written in chunks it costs a
chunk. Between chunks the server waits while the connection's write buffer is full, so a slow reader
holds back its own answer, not the controller's memory.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

CHUNK = 16 * 1024  # one TLS record's plaintext

Message = MutableMapping[str, Any]


async def send_body(send: Callable[[Message], Awaitable[None]], body: bytes, chunk: int = CHUNK) -> None:
    """`body` as http.response.body messages of at most `chunk` bytes (one empty message when empty)."""
    if len(body) <= chunk:
        await send({"type": "http.response.body", "body": body})
        return
    last = len(body) - chunk
    for start in range(0, len(body), chunk):
        await send(
            {"type": "http.response.body", "body": body[start : start + chunk], "more_body": start < last}
        )


class ChunkedResponse(Response):
    """A Response whose body (with its Content-Length) is sent in chunks of CHUNK bytes."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send_body(send, bytes(self.body))
        if self.background is not None:
            await self.background()
