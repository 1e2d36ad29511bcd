"""Handlers and the middleware chain around them, with the middlewares a program usually wants:
logging, a per-sender rate limit, authorization by role, and authorization by the mesh's policy (which
every `Node` installs).

A handler is `async def handler(message) -> reply`; its return value is the reply when the sender made a
request. A middleware is `async def mw(delivery, call_next) -> reply`: it may look at the delivery
(message, sender entry with its role, the peer it came through), call `call_next(delivery)` or refuse by
raising `Refused`. A refusal is counted in `Node.counters` under its `counter`, and a requester gets
the reason as a `RequestFailed`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal

from p2p.core.admission import Delivery
from p2p.core.directory import Directory
from p2p.core.message import Message
from p2p.core.pacing import TokenBucket
from wire.policy import Subject, selects

Handler = Callable[[Message], Awaitable[Any]]
BatchHandler = Callable[[list[Message]], Awaitable[Any]]  # takes a run's messages in one call (handlers.py)
Next = Callable[[Delivery], Awaitable[Any]]
Middleware = Callable[[Delivery, Next], Awaitable[Any]]
Guard = Callable[[Delivery], None]  # a plain check before the middlewares; raises Refused
RefusalCounter = Literal["unauthorized", "rate_limited"]


class Refused(Exception):
    """Raised by a middleware to stop a delivery; `counter` names the Counters field to increment."""

    def __init__(self, reason: str, counter: RefusalCounter) -> None:
        super().__init__(reason)
        self.reason = reason
        self.counter: RefusalCounter = counter


def chain(handler: Handler, middlewares: Iterable[Middleware]) -> Next:
    """The handler wrapped in `middlewares`, the first one outermost."""

    # Plain functions that return the awaitable: a coroutine frame per layer per message saved.
    def call_handler(delivery: Delivery) -> Awaitable[Any]:
        return handler(delivery.message)

    current: Next = call_handler
    for mw in reversed(list(middlewares)):
        current = _wrap(mw, current)
    return current


def _wrap(mw: Middleware, call_next: Next) -> Next:
    def call(delivery: Delivery) -> Awaitable[Any]:
        return mw(delivery, call_next)

    return call


def log_messages(logger: logging.Logger | None = None, level: int = logging.INFO) -> Middleware:
    """Log one line per delivery: type, sender, route, priority, and how long the handler took."""
    log = logger or logging.getLogger("p2p.messages")

    async def mw(delivery: Delivery, call_next: Next) -> Any:
        if not log.isEnabledFor(level):
            return await call_next(delivery)
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await call_next(delivery)
        except Refused as e:
            outcome = f"refused: {e.reason}"
            raise
        except Exception as e:
            outcome = f"failed: {type(e).__name__}"
            raise
        finally:
            m = delivery.message
            route = f" via {delivery.via}" if delivery.relayed else ""
            log.log(
                level,
                "%s from %s%s priority %d: %s in %.1f ms",
                m.type,
                delivery.sender.name or delivery.sender.node_id,
                route,
                m.priority,
                outcome,
                (time.perf_counter() - started) * 1000,
            )

    return mw


def rate_limit(
    rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic, max_senders: int = 4096
) -> Middleware:
    """At most `rate` messages per second per sender, in bursts of up to `burst`. Memory is bounded: at
    most `max_senders` buckets (senders are directory nodes, so this is only a backstop)."""
    buckets: dict[int, TokenBucket] = {}

    async def mw(delivery: Delivery, call_next: Next) -> Any:
        sender = delivery.sender.node_id
        now = clock()
        bucket = buckets.get(sender)
        if bucket is None:
            if len(buckets) >= max_senders:
                buckets.pop(next(iter(buckets)))
            bucket = buckets[sender] = TokenBucket(rate, burst, now)
        if not bucket.take(now):
            raise Refused(f"node {sender} is over its rate limit of {rate:g} messages/s", "rate_limited")
        return await call_next(delivery)

    return mw


def authorize_roles(rules: Mapping[str, Iterable[str]]) -> Middleware:
    """Only senders whose directory role is listed may send a message type, e.g.
    `{"task_assignment": ["supervisor"]}`. Types without a rule are open to every role."""
    allowed = {message_type: frozenset(roles) for message_type, roles in rules.items()}

    async def mw(delivery: Delivery, call_next: Next) -> Any:
        roles = allowed.get(delivery.message.type)
        if roles is not None and delivery.sender.role not in roles:
            raise Refused(
                f"role {delivery.sender.role!r} of node {delivery.sender.node_id} may not send "
                f"{delivery.message.type!r} (allowed: {', '.join(sorted(roles))})",
                "unauthorized",
            )
        return await call_next(delivery)

    return mw


def policy_check(directory: Callable[[], Directory]) -> Guard:
    """Only senders the policy in force allows may send a message type: the rights and the senders'
    tags come from the directory the agent writes from its map (`directory()` is the current one), so
    they change when the policy does. The sender is the message's origin, also when it came relayed.
    No policy in the directory: every type is open. A plain check (raises Refused), which every `Node`
    runs before its middlewares: no coroutine per message."""

    def check(delivery: Delivery) -> None:
        rights = directory().messages
        if rights is not None:
            selectors = rights.get(delivery.message.type)
            sender = delivery.sender
            if selectors is not None and not selects(selectors, Subject(sender.name, sender.tags)):
                raise Refused(
                    f"the policy does not let node {sender.node_id} ({sender.name}) send "
                    f"{delivery.message.type!r} (allowed: {', '.join(selectors) or 'nobody'})",
                    "unauthorized",
                )

    return check


def authorize_by_policy(directory: Callable[[], Directory]) -> Middleware:
    """`policy_check` as a middleware."""
    check = policy_check(directory)

    async def mw(delivery: Delivery, call_next: Next) -> Any:
        check(delivery)
        return await call_next(delivery)

    return mw
