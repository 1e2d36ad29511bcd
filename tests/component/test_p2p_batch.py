"""Batch handlers (`node.handle(type, fn, batch=True)`) on real nodes over loopback: what a program sees
is every message once, in order, many to a call under a backlog; a message the policy or a middleware
refuses is left out alone, counted, and the rest of its batch is delivered."""

from __future__ import annotations

import dataclasses

from p2p import Message, Refused, authorize_roles
from p2p.middleware import Next
from tests.support import eventually


async def test_a_batch_handler_gets_every_message_once_in_order_many_to_a_call(mesh_factory):
    mesh = mesh_factory(2)
    a, b = [await mesh.start(i) for i in (1, 2)]
    calls: list[list[Message]] = []

    @b.handle("grad", batch=True)
    async def on_grads(messages: list[Message]) -> None:
        calls.append(messages)

    await a.wait_connected(timeout=5)
    sent = [await a.send(2, "grad", n) for n in range(2000)]  # queued faster than written: a backlog
    await eventually("2000 messages", lambda: sum(map(len, calls)) >= 2000)
    got = [m for call in calls for m in call]
    assert [m.data for m in got] == list(range(2000))
    assert [m.id for m in got] == sent
    assert {(m.type, m.sender) for m in got} == {("grad", 1)}
    assert max(map(len, calls)) > 1  # many messages to one call
    assert b.counters.duplicate == 0 and b.recent(sent[-1]) is not None


async def test_a_request_or_a_compressed_message_reaches_a_batch_handler_alone(mesh_factory):
    mesh = mesh_factory(2)
    a, b = [await mesh.start(i) for i in (1, 2)]
    calls: list[list[object]] = []

    @b.handle("grad", batch=True)
    async def on_grads(messages: list[Message]) -> str:
        calls.append([m.data for m in messages])
        return "a batch handler's result is not a reply"

    await a.wait_connected(timeout=5)
    assert await a.request(2, "grad", "asked", timeout=2) is None
    big = [0.5] * 20_000  # above the compression threshold
    await a.send(2, "grad", big)
    await eventually("both", lambda: len(calls) == 2)
    assert calls == [["asked"], [big]]


async def test_a_message_the_policy_refuses_is_left_out_of_the_batch_alone(mesh_factory):
    mesh = mesh_factory(2)
    # the policy in node 1's directory lets only supervisors send "assign"; node 2 is tagged a worker
    worker = dataclasses.replace(mesh.entries[2], tags=frozenset({"worker"}))
    policy = {"assign": ("tag:supervisor",)}
    a = await mesh.start(1, directory=dataclasses.replace(mesh.directory(1, {2: worker}), messages=policy))
    b = await mesh.start(2)
    got: list[tuple[str, object]] = []

    async def on_any(messages: list[Message]) -> None:
        got.extend((m.type, m.data) for m in messages)

    a.handle_any(on_any, batch=True)
    await b.wait_connected(timeout=5)
    for n in range(300):
        await b.send(1, "assign" if n % 100 == 50 else "report", n)
    await eventually("3 refusals", lambda: a.counters.unauthorized == 3)
    await eventually("297 reports", lambda: len(got) >= 297)
    assert got == [("report", n) for n in range(300) if n % 100 != 50]


async def test_a_middleware_refusal_in_a_batch_is_the_refused_message_s_alone(mesh_factory):
    mesh = mesh_factory(2)
    a, b = [await mesh.start(i) for i in (1, 2)]
    got: list[object] = []
    seen: list[object] = []

    async def no_odd_tens(delivery, call_next: Next):
        seen.append(delivery.message.data)
        if delivery.message.data % 10 == 0 and delivery.message.data % 20:
            raise Refused("odd tens are not allowed", "unauthorized")
        return await call_next(delivery)

    b.use(no_odd_tens)
    b.use(authorize_roles({"secret": ["supervisor"]}))

    @b.handle("n", batch=True)
    async def on_n(messages: list[Message]) -> None:
        got.extend(m.data for m in messages)

    await a.wait_connected(timeout=5)
    for n in range(1000):
        await a.send(2, "n", n)
    expected = [n for n in range(1000) if not (n % 10 == 0 and n % 20)]
    await eventually("the allowed ones", lambda: len(got) >= len(expected))
    assert got == expected
    assert seen == list(range(1000))  # every message passed the middleware once
    assert b.counters.unauthorized == 50 and b.counters.handler_error == 0


async def test_a_failing_batch_handler_is_logged_once_and_the_next_batch_still_comes(mesh_factory, caplog):
    mesh = mesh_factory(2)
    a, b = [await mesh.start(i) for i in (1, 2)]
    got: list[object] = []

    @b.handle("n", batch=True)
    async def on_n(messages: list[Message]) -> None:
        if "boom" in [m.data for m in messages]:
            raise RuntimeError("boom")
        got.extend(m.data for m in messages)

    await a.wait_connected(timeout=5)
    for n in range(300):  # a backlog: "boom" arrives in a batch (or alone)
        await a.send(2, "n", "boom" if n == 150 else n)
    await eventually("the failure counted", lambda: b.counters.handler_error == 1)
    await a.send(2, "n", "fine")
    await eventually("the next one", lambda: got[-1:] == ["fine"])
    failures = [r for r in caplog.records if "handler for 'n' from node 1 failed" in r.getMessage()]
    assert len(failures) == 1
