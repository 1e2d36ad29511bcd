"""Long-poll lifetimes (issue #8 item 4): a held poll ends when its client goes, and a node holds only
a few polls at once (the oldest gives way, answered 429)."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

from controller.longpoll import POLLS_PER_NODE
from tests.support import LONG_POLL_S, ControllerHarness, Host, serial_of
from wire import api


class RawPoll:
    """One GET /v1/netmap driven straight through the ASGI app, whose client can hang up."""

    def __init__(self, controller: ControllerHarness, host: Host, since: int) -> None:
        self.gone = asyncio.Event()
        self.status: int | None = None
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": api.NETMAP,
            "raw_path": api.NETMAP.encode(),
            "root_path": "",
            "query_string": f"since={since}&timeout={LONG_POLL_S}".encode(),
            "headers": [(b"host", b"controller"), (b"authorization", f"Bearer {host.credential}".encode())],
            "client": ("127.0.0.1", 40000),
            "server": ("controller", 80),
        }
        self.task = asyncio.create_task(controller.app(scope, self._receive, self._send))
        self._sent_request = False

    async def _receive(self) -> MutableMapping[str, Any]:
        if not self._sent_request:
            self._sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]


async def held_polls(controller: ControllerHarness, node: int, count: int) -> None:
    polls = controller.app.state.polls
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while polls.held(node) != count:
        assert loop.time() < deadline, f"node {node} holds {polls.held(node)} polls, not {count}"
        await asyncio.sleep(0.005)


async def test_a_poll_whose_client_goes_ends_at_once(controller: ControllerHarness):
    a = await controller.enroll()
    poll = RawPoll(controller, a, await serial_of(controller, a))
    await controller.polls_parked(1)
    poll.gone.set()
    # LONG_POLL_S is 30 s: a poll that outlives its client would still wait here.
    await asyncio.wait_for(poll.task, timeout=10)
    assert controller.app.state.notifier.waiting() == 0
    assert controller.app.state.polls.held(a.node_id) == 0


async def test_many_abandoned_polls_leave_nothing_behind(controller: ControllerHarness):
    a = await controller.enroll()
    serial = await serial_of(controller, a)
    for _ in range(3):
        polls = [RawPoll(controller, a, serial) for _ in range(50)]
        await held_polls(controller, a.node_id, POLLS_PER_NODE)
        for p in polls:
            p.gone.set()
        await asyncio.wait_for(asyncio.gather(*(p.task for p in polls)), timeout=10)
        assert controller.app.state.notifier.waiting() == 0
    # the node still gets its pushes
    waiting = asyncio.create_task(controller.netmap(a, since=serial, timeout=LONG_POLL_S))
    await controller.polls_parked(1)
    await controller.enroll()
    assert (await waiting) is not None


async def test_a_node_holds_only_a_few_polls_and_the_oldest_gives_way(controller: ControllerHarness):
    a = await controller.enroll()
    serial = await serial_of(controller, a)
    polls = []
    for _ in range(POLLS_PER_NODE + 2):
        polls.append(
            asyncio.create_task(
                controller.client.get(
                    api.NETMAP, params={"since": serial, "timeout": LONG_POLL_S}, headers=a.auth
                )
            )
        )
        await held_polls(controller, a.node_id, min(len(polls), POLLS_PER_NODE))
    oldest = [await asyncio.wait_for(p, timeout=10) for p in polls[:2]]
    assert [r.status_code for r in oldest] == [429, 429]
    assert "too many polls" in oldest[0].json()["detail"]
    await controller.enroll()  # a new peer: every held poll answers with the new map
    newest = [await asyncio.wait_for(p, timeout=10) for p in polls[2:]]
    assert [r.status_code for r in newest] == [200] * POLLS_PER_NODE
