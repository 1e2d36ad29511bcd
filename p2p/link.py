"""What a node keeps per peer: the directory entry, the bounded send and inbound queues, the current
authenticated connection (at most one), and the tasks that drive them.

Rules:
- One connection per peer: attaching a new authenticated connection closes the one it replaces (the
  newest wins, so a restarted peer or a half-open connection is replaced at once).
- Send and inbound queues are bounded; waiting for room is how backpressure reaches a sender.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.connection import Connection

from p2p.core.admission import Delivery, RunDelivery
from p2p.core.directory import DirectoryEntry
from p2p.core.frame import Item
from p2p.core.queue import BoundedPriorityQueue
from p2p.core.session import Session


@dataclass(eq=False)
class PeerConnection:
    """One WebSocket and the session running on it."""

    ws: Connection
    session: Session
    dialed: bool
    reason: str | None = None  # why it closed, for the PeerDown event and logs
    held: bool = False  # the reader waits for inbound room: the peer's silence is not its fault
    task: asyncio.Task[Any] | None = None  # the task reading it
    link: PeerLink | None = None  # the peer's link, once the handshake authenticated it

    def abort(self) -> None:
        self.session.close()
        self.ws.transport.abort()


@dataclass(eq=False)
class PeerLink:
    entry: DirectoryEntry
    outbox: BoundedPriorityQueue[Item]
    inbox: BoundedPriorityQueue[Delivery | RunDelivery]  # a run is one entry, charged all its bytes
    connection: PeerConnection | None = None
    # set when the outbox has items or a connection attached: the writer looks again
    outbox_ready: asyncio.Event = field(default_factory=asyncio.Event)
    # set when the outbox has room again: blocked senders try again
    outbox_room: asyncio.Event = field(default_factory=asyncio.Event)
    # set when nothing is queued or being written: drain() waits on it
    outbox_idle: asyncio.Event = field(default_factory=asyncio.Event)
    inbox_ready: asyncio.Event = field(default_factory=asyncio.Event)
    inbox_room: asyncio.Event = field(default_factory=asyncio.Event)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    dial_task: asyncio.Task[None] | None = None
    # True while outbox_ready is set and outbox_idle clear since the writer last looked: a push then
    # needs neither call (`poke`)
    poked: bool = False

    def __post_init__(self) -> None:
        self.outbox_idle.set()
        self.disconnected.set()

    @property
    def node_id(self) -> int:
        return self.entry.node_id

    @property
    def up(self) -> bool:
        return self.connection is not None

    def push_outbox(self, item: Item, priority: int, size: int) -> bool:
        if not self.outbox.push(item, priority, size):
            return False
        if not self.poked:
            self.poke()
        return True

    def poke(self) -> None:
        """Something was queued: wake the writer, and drain() waits."""
        self.poked = True
        self.outbox_idle.clear()
        self.outbox_ready.set()

    async def wait_outbox_room(self, item: Item, priority: int, size: int, deadline: float) -> bool:
        """Queue `item`, waiting for room until the loop time `deadline`. False on timeout."""
        loop = asyncio.get_running_loop()
        while not self.push_outbox(item, priority, size):
            self.outbox_room.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):
                    await self.outbox_room.wait()
            except TimeoutError:
                return False
        return True

    def push_inbox(self, delivery: Delivery | RunDelivery, size: int) -> bool:
        message = delivery.message if type(delivery) is Delivery else delivery.messages[0]  # type: ignore[union-attr]
        if not self.inbox.push(delivery, message.priority, size):
            return False
        self.inbox_ready.set()
        return True

    async def wait_inbox_room(
        self, delivery: Delivery | RunDelivery, size: int, conn: PeerConnection
    ) -> None:
        """Queue an inbound delivery, holding the connection unread until there is room. Wakes the
        handler first: the reader may have queued messages without waking it (once a frame)."""
        self.inbox_ready.set()
        conn.held = True
        try:
            while not self.push_inbox(delivery, size):
                self.inbox_room.clear()
                await self.inbox_room.wait()
        finally:
            conn.held = False

    def cancel_tasks(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.dial_task is not None:
            self.dial_task.cancel()
