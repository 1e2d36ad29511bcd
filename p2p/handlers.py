"""`HandlerTable`: the handlers a node runs, by message type, and the middleware chain around each.

`run(delivery)` calls the handler through the chain and turns every way it can end into an `Answer`
(what a requester gets back) and at most one counter: no handler, refused by a middleware, handler
raised. Nothing a handler does escapes to the transport.

A batch handler (`handle(type, fn, batch=True)`) is `async def fn(messages: list[Message])`: it gets
the messages of a run (many direct messages of one type from one peer, p2p/core/frame.py) in one call,
in order, each once, after the same checks a message taken alone gets: the guards (the policy) and
every middleware, per message; a refused message is left out and counted, the others are delivered.
A message that arrives alone (a request, a broadcast, a compressed one) is a batch of one; a request's
answer is None (a batch handler's return value is not a reply).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, NamedTuple

from p2p.core.admission import Delivery, RunDelivery
from p2p.core.counters import Counters
from p2p.core.message import Message, check_type
from p2p.middleware import BatchHandler, Guard, Handler, Middleware, Next, Refused, chain


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
        self._batch: set[str] = set()  # types whose handler takes batches
        self._fallback: Handler | None = None
        self._fallback_batch = False
        self._middlewares: list[Middleware] = []
        self._guards: list[Guard] = []
        self._chains: dict[str, Next] = {}  # built on first use, dropped on every registration
        self._admit: Next | None = None  # the middlewares around nothing: a batch's per-message checks

    def handle(
        self, message_type: str, handler: Handler | BatchHandler | None = None, *, batch: bool = False
    ) -> Any:
        """Register `handler` for `message_type`; usable as a decorator: `@node.handle("x")`. With
        `batch`, the handler takes a list of messages (the module's docstring)."""
        check_type(message_type)

        def register(fn: Any) -> Any:
            self._handlers[message_type] = fn
            if batch:
                self._batch.add(message_type)
            else:
                self._batch.discard(message_type)
            self._chains.clear()
            return fn

        return register(handler) if handler is not None else register

    def handle_any(self, handler: Any, *, batch: bool = False) -> Any:
        """The handler for every type without its own (with `batch`: taking lists of messages)."""
        self._fallback = handler
        self._fallback_batch = batch
        self._chains.clear()
        return handler

    def batch_handler(self, message_type: str) -> BatchHandler | None:
        """The handler of `message_type` when it takes batches, else None."""
        if message_type in self._handlers:
            return self._handlers[message_type] if message_type in self._batch else None  # type: ignore[return-value]
        return self._fallback if self._fallback_batch else None  # type: ignore[return-value]

    def use(self, middleware: Middleware) -> None:
        """Add a middleware around every handler; the first added is the outermost."""
        self._middlewares.append(middleware)
        self._chains.clear()
        self._admit = None

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
            if self.batch_handler(message_type) is not None:
                handler = _alone(handler)  # type: ignore[arg-type]
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

    async def run_batch(self, handler: BatchHandler, run: RunDelivery) -> None:
        """Call a batch handler with the messages of `run` that the guards and middlewares let through
        (each message checked; a refused one counted and left out). Nothing raises."""
        messages = run.messages
        counters = self._counters
        if self._guards:
            # a run's messages share their type and sender, all a guard judges: one call judges each
            first: Delivery = _new_tuple(Delivery, (messages[0], run.sender, run.via, False))
            try:
                for check in self._guards:
                    check(first)
            except Refused as e:
                setattr(counters, e.counter, getattr(counters, e.counter) + len(messages))
                return
        if self._middlewares:
            messages = await self._admitted(run.deliveries())
            if not messages:
                return
        try:
            await handler(messages)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._batch_failed(messages, e)

    async def _admitted(self, deliveries: list[Delivery]) -> list[Message]:
        """The messages the middlewares let through, each run through the chain on its own."""
        admit = self._admit
        if admit is None:
            admit = self._admit = chain(_accept, self._middlewares)
        out: list[Message] = []
        for delivery in deliveries:
            try:
                await admit(delivery)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.failed(delivery, e)
            else:
                out.append(delivery.message)
        return out

    def _batch_failed(self, messages: list[Message], error: Exception) -> None:
        self._counters.handler_error += 1
        first = messages[0]
        self._log.error(
            "batch handler for %r from node %d failed on %d messages",
            first.type,
            first.sender,
            len(messages),
            exc_info=error,
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


def _alone(handler: BatchHandler) -> Handler:
    """A batch handler taking one message (a request, a broadcast): a batch of one, answered None."""

    async def one(message: Message) -> None:
        await handler([message])

    return one


async def _accept(message: Message) -> None:
    """The end of the chain a batch's messages pass through before their batch handler is called."""
