"""How the controller's HTTP server holds up against clients that hold on: uvicorn's h11 protocol with a
whole-request deadline, a file-descriptor limit raised to what the system allows, and accept errors
logged once per interval instead of once per attempt.

Rules:
- A connection has REQUEST_DEADLINE_S from its first byte (or from its opening, when it sends none) to
  deliver a whole request, head and body; one that does not is closed. Time spent answering (a held
  long-poll) is not counted; between requests the keep-alive timeout applies, as in uvicorn.
- A TLS connection has the same REQUEST_DEADLINE_S to finish its handshake (asyncio's default is 60 s and
  uvicorn does not pass one): GuardedServer sets it on every listening socket it opens.
- A connection's buffers stay small whatever it was sent (at 5,000 agents every byte kept per connection
  is multiplied by 5,000): asyncio's TLS layer reads into TLS_READ_BUFFER bytes instead of its own
  256 KiB (zeroed, so resident, for each connection), and a connection's writing pauses above
  WRITE_HIGH_WATER bytes not yet on the socket. TLS encrypts into a memory buffer that keeps the size
  of the largest burst it held for the connection's life: a large answer is written in chunks
  (controller.poll_route), so what it keeps is about a chunk plus WRITE_HIGH_WATER.
- Once serving (controller.cli calls `settle_gc`), what start-up built (the mesh, its cards, the code) is frozen out of the cyclic garbage
  collector's scans (`gc.freeze`), and its youngest generation is collected every GC_YOUNG allocations
  instead of 700: at 5,000 agents a change makes some 100,000 short-lived objects, and the collector's
  passes over everything long-lived were a tenth of the controller's CPU per change.
- Errors the event loop reports again and again with the same message (accept() failing with EMFILE
  while every descriptor is taken) are logged once, then counted and summed up at most once per
  LOG_EVERY_S: a flood of connections never becomes a flood of log lines.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import gc
import logging
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

REQUEST_DEADLINE_S = 10.0
LOG_EVERY_S = 10.0
TLS_READ_BUFFER = 16 * 1024  # one TLS record's plaintext: a request head reads in one go
WRITE_HIGH_WATER = 16 * 1024
GC_YOUNG = 20_000

log = logging.getLogger("wgmesh.controller")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections that do not deliver a whole request in time."""

    request_deadline_s = REQUEST_DEADLINE_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self._between_requests():
            self._arm()  # the first byte of the next request starts its clock
        super().data_received(data)
        if self._deadline is not None and self._answering():
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request: data_received's check covers it
        if self._deadline is not None and self._answering():
            self._disarm()

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _answering(self) -> bool:
        """A request's head and body are all in and its answer is not finished yet."""
        return self.cycle is not None and not self.cycle.response_complete and not self.cycle.more_body

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.request_deadline_s, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self._answering():
            return  # the request is in and being answered
        if not self.transport.is_closing():
            self.transport.close()


class GuardedServer(uvicorn.Server):
    """uvicorn's server whose TLS listeners close a client that has not finished its handshake within
    handshake_deadline_s (the stalled handshake is otherwise held for asyncio's 60 s)."""

    handshake_deadline_s = REQUEST_DEADLINE_S

    async def startup(self, sockets: list[Any] | None = None) -> None:
        small_tls_buffers()
        with handshake_deadline(asyncio.get_running_loop(), self.handshake_deadline_s):
            await super().startup(sockets)


def small_tls_buffers(size: int = TLS_READ_BUFFER) -> None:
    """TLS connections made from now on in this process read into `size` bytes each (asyncio's
    SSLProtocol allocates, and zeroes, its `max_size` for every connection; it has no other knob)."""
    asyncio.sslproto.SSLProtocol.max_size = size


def settle_gc(young: int = GC_YOUNG) -> None:
    """Everything alive now is left out of the collector's scans from now on; the youngest generation
    is collected every `young` allocations (the older ones as before, relative to it)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, old)


@contextmanager
def handshake_deadline(loop: asyncio.AbstractEventLoop, seconds: float) -> Iterator[None]:
    """While inside, every TLS server the loop creates gets ssl_handshake_timeout=seconds."""
    original = loop.create_server

    async def create_server(*args: Any, **kwargs: Any) -> asyncio.Server:
        if kwargs.get("ssl") is not None:
            kwargs.setdefault("ssl_handshake_timeout", seconds)
        return await original(*args, **kwargs)

    loop.create_server = create_server  # type: ignore[method-assign]
    try:
        yield
    finally:
        del loop.create_server  # back to the class's method


class ThrottledLoopErrors:
    """An event-loop exception handler that logs a repeated message once per LOG_EVERY_S."""

    def __init__(self, every_s: float = LOG_EVERY_S, clock: Any = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", "event loop error"))
        exc = context.get("exception")
        key = f"{message}: {exc}" if isinstance(exc, OSError) else None
        if key is None:
            loop.default_exception_handler(context)
            return
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        again = self._suppressed.pop(key, 0)
        more = f" ({again} more in the last {now - last:.0f} s)" if last is not None and again else ""
        log.error("%s%s", key, more)


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft limit of open files to the hard limit (every connection takes one); returns
    (soft before, soft now)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, target
    return soft, soft
