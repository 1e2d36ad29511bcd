"""The middleware chain and the stock middlewares, called directly (no network)."""

from __future__ import annotations

import logging
from ipaddress import IPv4Address

import pytest

from keys.types import IdentityPrivateKey
from p2p.core.admission import Delivery
from p2p.core.directory import DirectoryEntry
from p2p.core.message import Message
from p2p.middleware import Refused, authorize_roles, chain, log_messages, rate_limit


def delivery(sender: int = 2, role: str = "worker", type_: str = "t", via: int | None = None) -> Delivery:
    entry = DirectoryEntry(
        sender, f"n{sender}", IPv4Address("127.0.0.1"), role, IdentityPrivateKey.generate().public_key()
    )
    return Delivery(Message(type_, {"k": 1}, 0.0, sender, bytes(16), 5), entry, via or sender, False)


async def echo(message: Message):
    return message.data


async def test_middlewares_run_outermost_first_around_the_handler():
    seen: list[str] = []

    def tag(name: str):
        async def mw(d, call_next):
            seen.append(f"{name}>")
            result = await call_next(d)
            seen.append(f"<{name}")
            return result

        return mw

    handle = chain(echo, [tag("a"), tag("b")])
    assert await handle(delivery()) == {"k": 1}
    assert seen == ["a>", "b>", "<b", "<a"]


async def test_only_listed_roles_may_send_a_guarded_type():
    handle = chain(echo, [authorize_roles({"task_assignment": ["supervisor"]})])
    assert await handle(delivery(role="supervisor", type_="task_assignment")) == {"k": 1}
    assert await handle(delivery(role="worker", type_="gradient")) == {"k": 1}  # unguarded type
    with pytest.raises(Refused) as e:
        await handle(delivery(role="worker", type_="task_assignment"))
    assert e.value.counter == "unauthorized"
    assert e.value.reason == "role 'worker' of node 2 may not send 'task_assignment' (allowed: supervisor)"


async def test_rate_limit_is_per_sender():
    now = [0.0]
    handle = chain(echo, [rate_limit(rate=1, burst=2, clock=lambda: now[0])])
    for _ in range(2):
        await handle(delivery(sender=2))
    with pytest.raises(Refused) as e:
        await handle(delivery(sender=2))
    assert e.value.counter == "rate_limited"
    await handle(delivery(sender=3))  # another sender has its own bucket
    now[0] = 1.0
    await handle(delivery(sender=2))


async def test_logging_writes_one_line_per_delivery(caplog):
    handle = chain(echo, [log_messages(logging.getLogger("test.p2p"))])
    with caplog.at_level(logging.INFO, "test.p2p"):
        await handle(delivery(type_="gradient", via=4))
    [record] = caplog.records
    assert record.getMessage().startswith("gradient from n2 via 4 priority 5: ok in ")
