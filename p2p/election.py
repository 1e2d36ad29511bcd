"""`LeaderElection`: the Raft-style election core (`p2p.core.election`) run over a `Node`.

    async with Node(directory, key) as node, LeaderElection(node) as election:
        leader = await election.wait_leader(timeout=10)
        if election.is_leader: ...
        async for change in election.changes():   # LeaderChanged(leader, term), from now on
            ...

Election messages travel as p2p messages of type `p2p.election` at the highest priority, only to
connected peers and never waiting for queue room (a late election message is worthless; the core's
timers resend what matters). The voters are this node and every peer in the directory (optionally
only those with a given role), followed as the directory changes. Middlewares see election messages
like any other: an authorization rule must let voters send `p2p.election`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterable

from p2p.core.election import (
    ElectionState,
    ElectionTiming,
    LeaderChanged,
    Output,
    Role,
    Send,
    decode_message,
    encode_message,
)
from p2p.core.message import PRIORITY_MAX, Message
from p2p.node import Node

ELECTION_TYPE = "p2p.election"


class LeaderElection:
    def __init__(
        self,
        node: Node,
        *,
        voters: Iterable[int] | None = None,
        role: str | None = None,
        timing: ElectionTiming | None = None,
        rand: Callable[[], float] = random.random,
        logger: logging.Logger | None = None,
    ) -> None:
        self.node = node
        self._fixed_voters = frozenset(voters) if voters is not None else None
        self._role = role
        self.timing = timing or ElectionTiming()
        self._rand = rand
        self._log = logger or logging.getLogger("p2p.election")
        self._state: ElectionState | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._followers: list[asyncio.Queue[LeaderChanged | None]] = []

    # --- what a program reads ---------------------------------------------------------------------------

    @property
    def leader(self) -> int | None:
        return self._state.leader if self._state else None

    @property
    def term(self) -> int:
        return self._state.term if self._state else 0

    @property
    def is_leader(self) -> bool:
        return self._state is not None and self._state.role is Role.LEADER

    async def wait_leader(self, timeout: float = 10.0) -> int:
        """The leader, once one is known; TimeoutError when none is within `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while self.leader is None:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"no leader elected within {timeout:g} s (term {self.term})") from None
        assert self.leader is not None
        return self.leader

    async def changes(self) -> AsyncIterator[LeaderChanged]:
        """Every leader change seen by this node from the first iteration on (leader None: an election
        is on), until the election closes. A follower that does not keep up loses the oldest changes, never blocks."""
        queue: asyncio.Queue[LeaderChanged | None] = asyncio.Queue(1024)
        self._followers.append(queue)
        try:
            while (change := await queue.get()) is not None:
                yield change
        finally:
            self._followers.remove(queue)

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def __aenter__(self) -> LeaderElection:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._state = ElectionState(
            self.node.node_id, self._voters(), now=loop.time(), rand=self._rand, timing=self.timing
        )
        self.node.handle(ELECTION_TYPE, self._on_message)
        self._task = asyncio.create_task(self._tick_loop(), name=f"p2p-{self.node.node_id}-election")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for queue in self._followers:
            _put_dropping_oldest(queue, None)

    # --- driving the core -----------------------------------------------------------------------------------

    def _voters(self) -> set[int]:
        if self._fixed_voters is not None:
            return set(self._fixed_voters)
        return {e.node_id for e in self.node.directory if self._role is None or e.role == self._role}

    async def _tick_loop(self) -> None:
        assert self._state is not None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.timing.heartbeat_interval / 2)
            self._state.set_voters(self._voters())
            self._apply(self._state.tick(loop.time()))

    async def _on_message(self, message: Message) -> None:
        assert self._state is not None
        try:
            decoded = decode_message(message.data)
        except ValueError:
            self.node.counters.malformed += 1
            return
        self._apply(self._state.receive(message.sender, decoded, asyncio.get_running_loop().time()))

    def _apply(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, Send):
                if out.to in self.node.directory.peers:
                    self.node.try_send(
                        out.to, ELECTION_TYPE, encode_message(out.message), priority=PRIORITY_MAX
                    )
            elif isinstance(out, LeaderChanged):
                self._log.info("leader is now %s (term %d)", out.leader, out.term)
                self._changed.set()
                for queue in self._followers:
                    _put_dropping_oldest(queue, out)


def _put_dropping_oldest(queue: asyncio.Queue[LeaderChanged | None], item: LeaderChanged | None) -> None:
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(item)


__all__ = ["ELECTION_TYPE", "LeaderElection"]
