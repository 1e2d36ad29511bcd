"""`HandlerTable`: the handlers a node runs, by message type, and the middleware chain around each.

`run(delivery)` calls the handler through the chain and turns every way it can end into an `Answer`
(what a requester gets back) and at most one counter: no handler, refused by a middleware, handler
raised. Nothing a handler does escapes to the transport.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, NamedTuple

from p2p.core.admission import Delivery
from p2p.core.counters import Counters
from p2p.core.message import check_type
from p2p.middleware import Guard, Handler, Middleware, Next, Refused, chain


class Answer(NamedTuple):
    """The outcome of a delivery: the handler's result, or an error text (`error` True). A NamedTuple:
    built once per message, a third of a frozen dataclass's cost."""

    data: Any
    error: bool


_new_tuple = tuple.__new__  # builds the NamedTuple without its Python-level __new__ (once per message)


class HandlerTable:
    def __init__(self, *, node_id: int, counters: Counters, log: logging.Logger) -> None:
        self._node_id = node_id
        self._counters = counters
        self._log = log
        self._handlers: dict[str, Handler] = {}
        self._fallback: Handler | None = None
        self._middlewares: list[Middleware] = []
        self._guards: list[Guard] = []
        self._chains: dict[str, Next] = {}  # built on first use, dropped on every registration

    def handle(self, message_type: str, handler: Handler | None = None) -> Any:
        """Register `handler` for `message_type`; usable as a decorator: `@node.handle("x")`."""
        check_type(message_type)

        def register(fn: Handler) -> Handler:
            self._handlers[message_type] = fn
            self._chains.clear()
            return fn

        return register(handler) if handler is not None else register

    def handle_any(self, handler: Handler) -> Handler:
        """The handler for every type without its own."""
        self._fallback = handler
        self._chains.clear()
        return handler

    def use(self, middleware: Middleware) -> None:
        """Add a middleware around every handler; the first added is the outermost."""
        self._middlewares.append(middleware)
        self._chains.clear()

    def guard(self, check: Guard) -> None:
        """Add a plain check run before every middleware (outside the outermost), in the order added;
        it refuses by raising Refused. Cheaper than a middleware: no coroutine per message."""
        self._guards.append(check)

    def _chain_for(self, message_type: str) -> Next | None:
        found = self._chains.get(message_type)
        if found is None:
            handler = self._handlers.get(message_type, self._fallback)
            if handler is None:
                return None
            found = self._chains[message_type] = chain(handler, self._middlewares)
        return found

    def start(self, delivery: Delivery) -> Answer | Awaitable[Any]:
        """The first half of `run`, a plain call: the Answer when no handler takes the delivery or a
        guard refuses it, else the chain's awaitable (its result is the handler's). Errors raised by
        the awaitable go to `failed`. Lets a transport run a handler with one coroutine, its own."""
        message = delivery.message
        handle = self._chain_for(message.type)
        if handle is None:
            self._counters.no_handler += 1
            return Answer(f"node {self._node_id} has no handler for {message.type!r}", True)
        try:
            for check in self._guards:
                check(delivery)
        except Refused as e:
            return self.failed(delivery, e)
        return handle(delivery)

    def failed(self, delivery: Delivery, error: Exception) -> Answer:
        """The Answer for a delivery whose guard, middleware or handler raised `error`, counted."""
        message = delivery.message
        if isinstance(error, Refused):
            setattr(self._counters, error.counter, getattr(self._counters, error.counter) + 1)
            return Answer(f"refused: {error.reason}", True)
        self._counters.handler_error += 1
        self._log.error("handler for %r from node %d failed", message.type, message.sender, exc_info=error)
        return Answer(
            f"handler for {message.type!r} failed on node {self._node_id}: {type(error).__name__}: {error}",
            True,
        )

    async def run(self, delivery: Delivery) -> Answer:
        """Run the delivery's handler through the guards and the middleware chain; every way it can end
        is an Answer."""
        pending = self.start(delivery)
        if type(pending) is Answer:
            return pending
        try:
            return _new_tuple(Answer, (await pending, False))  # type: ignore[misc]
        except asyncio.CancelledError:
            raise
        except Exception as e:
            return self.failed(delivery, e)
