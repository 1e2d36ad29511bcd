"""Slow clients (issue #8 item 2): the controller's HTTP server (uvicorn with
controller.serving.GuardedH11Protocol, on a loopback port) closes a connection that does not deliver
a whole request in time, and never one whose request is in and being answered; a TLS client that stalls
in its handshake is closed as soon (controller.serving.GuardedServer); repeated accept errors are logged
once per interval."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from controller.chunked import CHUNK, send_body
from controller.serving import GuardedH11Protocol, GuardedServer, ThrottledLoopErrors
from controller.tls import ServerTls, managed_tls

DEADLINE_S = 0.5
ANSWER_AFTER_S = 2.0  # a held answer, longer than the deadline
BIG = bytes(range(256)) * (128 * CHUNK // 256) + b"end"  # 2 MB (a map at 5,000 nodes), the last chunk short


class QuickGuard(GuardedH11Protocol):
    request_deadline_s = DEADLINE_S


class QuickServer(GuardedServer):
    handshake_deadline_s = DEADLINE_S


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if scope["path"] == "/held":
        await asyncio.sleep(ANSWER_AFTER_S)
    if scope["path"] == "/big":
        length = str(len(BIG)).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]})
        await send_body(send, BIG)
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async for p in serving():
        yield p


@pytest.fixture
def tls(tmp_path: Path) -> ServerTls:
    return managed_tls(tmp_path / "tls", ["127.0.0.1"], datetime.now(UTC))


@pytest.fixture
async def tls_port(tls: ServerTls) -> AsyncIterator[int]:
    async for p in serving(ssl_certfile=str(tls.cert_file), ssl_keyfile=str(tls.key_file)):
        yield p


async def serving(**ssl_files: str) -> AsyncIterator[int]:
    """A guarded server on a loopback port (TLS with ssl_files) for as long as the caller iterates."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    config = uvicorn.Config(
        app,
        http=QuickGuard,
        log_level="warning",
        lifespan="off",
        timeout_keep_alive=30,
        **ssl_files,  # type: ignore[arg-type]
    )
    server = QuickServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not server.started:
        assert loop.time() < deadline, "the server did not start"
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """What the server sent before it closed the connection (fails if it stays open)."""
    return await asyncio.wait_for(reader.read(), seconds)


async def test_half_a_request_is_closed_after_the_deadline(port: int):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n")
    await writer.drain()
    assert await closed_within(reader, 5) == b""
    writer.close()


async def test_a_silent_connection_is_closed_after_the_deadline(port: int):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await closed_within(reader, 5) == b""
    writer.close()


async def test_a_body_that_trickles_is_closed(port: int):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123")
    await writer.drain()
    assert await closed_within(reader, 5) == b""
    writer.close()


async def test_a_request_being_answered_is_not_cut_and_keep_alive_still_works(port: int):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /held HTTP/1.1\r\nhost: x\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200") and await reader.readexactly(2) == b"ok"
    # a second request on the same connection, sent slowly but within the deadline
    writer.write(b"GET / HTTP/1.1\r\n")
    await writer.drain()
    await asyncio.sleep(DEADLINE_S / 5)
    writer.write(b"host: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200")
    writer.close()


async def test_a_large_answer_reaches_a_tls_client_that_reads_late_whole_and_in_order(
    tls: ServerTls, tls_port: int
):
    context = ssl.create_default_context(cadata=(tls.ca_pem or b"").decode())
    reader, writer = await asyncio.open_connection("127.0.0.1", tls_port, ssl=context, limit=4 * len(BIG))
    writer.write(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
    await asyncio.sleep(0.5)  # the server fills what the connection buffers and waits
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200") and f"content-length: {len(BIG)}".encode() in head.lower()
    assert await asyncio.wait_for(reader.readexactly(len(BIG)), 10) == BIG
    writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")  # and the connection still serves
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200")
    writer.close()


async def test_a_stalled_tls_handshake_is_closed_after_the_deadline(tls_port: int):
    reader, writer = await asyncio.open_connection("127.0.0.1", tls_port)
    writer.write(b"\x16\x03\x01\x00\xff")  # the first bytes of a ClientHello, and then nothing
    await writer.drain()
    assert await closed_within(reader, 5) == b""
    writer.close()


async def test_a_tls_client_is_still_answered(tls: ServerTls, tls_port: int):
    context = ssl.create_default_context(cadata=(tls.ca_pem or b"").decode())
    reader, writer = await asyncio.open_connection("127.0.0.1", tls_port, ssl=context)
    writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200")
    writer.close()


def test_a_repeated_accept_error_is_logged_once_per_interval(caplog: pytest.LogCaptureFixture):
    now = [0.0]
    handler = ThrottledLoopErrors(every_s=10, clock=lambda: now[0])
    loop = asyncio.new_event_loop()
    try:
        context = {
            "message": "socket.accept() out of system resource",
            "exception": OSError(24, "Too many open files"),
        }
        with caplog.at_level(logging.ERROR, logger="wgmesh.controller"):
            for i in range(20_000):
                now[0] = i * 0.0005  # 20,000 failures in 10 s
                handler(loop, context)
            now[0] = 10.5
            handler(loop, context)
    finally:
        loop.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "Too many open files" in lines[0]
    assert "19999 more in the last 10 s" in lines[1]


def test_other_loop_errors_go_to_the_default_handler(caplog: pytest.LogCaptureFixture):
    handler = ThrottledLoopErrors()
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.ERROR):
            for _ in range(3):
                handler(loop, {"message": "Task exception was never retrieved", "exception": ValueError("x")})
    finally:
        loop.close()
    assert sum("never retrieved" in r.getMessage() for r in caplog.records) == 3
