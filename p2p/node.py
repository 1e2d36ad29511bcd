"""`Node`: the asyncio/websockets transport that drives the sans-I/O core for one mesh node.

    async with Node(directory, identity_key) as node:
        node.handle("gradient", on_gradient)
        await node.send(2, "gradient", data, priority=7)
        await node.broadcast("block", block)
        reply = await node.request(3, "task_status", {}, timeout=2.0)

Rules:
- The node listens on its tunnel address (the directory's `self` entry, default port 8421) and keeps one
  authenticated connection per peer. Of two listening nodes, the one with the lower node id dials and the
  other waits, so two nodes never dial each other at once; a node that does not listen (`listen=False`,
  e.g. the CLI) dials every peer in its directory. A newer authenticated connection from a peer replaces
  the older one.
- Delivery is at most once: a message is queued per peer (bounded, highest priority first) and written
  when the peer is connected; frames in flight when a connection breaks are lost (a request then times
  out). `drain()` waits until the queues are written. A request with `retries` is sent again under the
  same id when no answer came within its timeout; the peer runs its handler once and answers every
  copy from its reply cache (p2p/core/replies.py): at least once on the wire, at most once in the
  handler, within the cache's bounds.
- Inbound messages wait in a bounded per-peer queue for that peer's handler task(s), so a flooding peer
  fills only its own queue and then its own TCP window; other peers' messages keep flowing.
- Every drop is counted in `counters`; nothing a peer sends raises in the program.
- Wall-clock time (`clock`) stamps messages and judges the replay window; timers use the loop's
  monotonic clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from keys.types import IdentityPrivateKey
from p2p.config import NodeConfig
from p2p.core.admission import Admission, Delivery, RunDelivery, verify_signatures
from p2p.core.codec import BodyCodec, BodyError, BodyTooLarge
from p2p.core.counters import Counters
from p2p.core.directory import Directory, DirectoryEntry
from p2p.core.frame import (
    DIRECT,
    FLAG_ERROR,
    FLAG_IDEMPOTENT,
    FLAG_REPLY,
    FLAG_REQUEST,
    DirectRun,
    Envelope,
    Item,
    direct_item,
    local_gossip_item,
    new_tuple,
    sign_broadcasts,
)
from p2p.core.gate import GateVerdict, admit_handshake
from p2p.core.history import ENTRY_OVERHEAD, History
from p2p.core.message import (
    MAX_TYPE_LEN,
    PRIORITY_DEFAULT,
    PRIORITY_MAX,
    PRIORITY_MIN,
    Message,
    MessageIds,
    check_priority,
    check_type,
)
from p2p.core.pacing import Backoff
from p2p.core.queue import BoundedPriorityQueue
from p2p.core.replay import ReplayWindow
from p2p.core.replies import Begun, ReplyCache
from p2p.core.session import (
    Event,
    GossipArrived,
    HeartbeatDue,
    Opened,
    Outgoing,
    Session,
    SessionLimits,
    SessionState,
)
from p2p.directory import DirectoryFile, follow_directory
from p2p.errors import NodeClosed, PayloadError, RequestFailed, RequestTimeout, SendTimeout, UnknownPeer
from p2p.events import PeerDown, PeerEvent, PeerEventStream, PeerUp
from p2p.handlers import Answer, HandlerTable
from p2p.link import PeerConnection, PeerLink
from p2p.middleware import BatchHandler, Handler, Middleware, policy_check
from p2p.requests import PendingRequests

ITEM_OVERHEAD = 64  # bytes charged per queued item besides its body
HEARTBEAT_SIZE = 16


class Node:
    def __init__(
        self,
        directory: Directory | Path | str,
        identity: IdentityPrivateKey,
        *,
        config: NodeConfig | None = None,
        history: History | None = None,
        clock: Callable[[], float] = time.time,
        logger: logging.Logger | None = None,
    ) -> None:
        self.config = config or NodeConfig()
        self._directory_file: DirectoryFile | None = None
        if not isinstance(directory, Directory):
            self._directory_file = DirectoryFile(Path(directory))
            directory = self._directory_file.load()
        _check_identity(directory, identity)
        self.directory = directory
        self.identity = identity
        self.counters = Counters()
        self.history = history if history is not None else History()
        self._clock = clock
        self._log = logger or logging.getLogger("p2p")
        self._codec = BodyCodec(
            max_bytes=self.config.max_message_bytes, threshold=self.config.compression_threshold
        )
        self._admission = Admission(
            directory=directory,
            history=self.history,
            replay=ReplayWindow(self.config.replay_window, self.config.replay_per_origin),
            codec=self._codec,
            counters=self.counters,
        )
        self._limits = SessionLimits(
            max_frame_bytes=self.config.max_frame_bytes,
            handshake_timeout=self.config.handshake_timeout,
            heartbeat_interval=self.config.heartbeat_interval,
            dead_after=self.config.dead_after,
        )
        self._backoff = Backoff(self.config.backoff_initial, self.config.backoff_max)
        self._random = random.Random()
        self._ids = MessageIds(os.urandom(8))
        self._node_id = directory.own.node_id  # never changes (set_directory refuses another node's)
        # what `send` inlines of the codec and the history (once per message)
        self._plain_pack = self._codec.plain_pack
        self._plain_limit = min(self._codec.threshold, self._codec.max_bytes)
        self._record_sent = self.history.deferred.append
        self._links: dict[int, PeerLink] = {}
        self._connections: set[PeerConnection] = set()
        # unfinished inbound handshakes and their remote address, oldest first (p2p/core/gate.py)
        self._inbound_handshakes: dict[PeerConnection, str] = {}
        self.refused_sources: Counter[str] = Counter()  # inbound connections refused, by address
        self._requests = PendingRequests()
        self._replies = ReplyCache(
            max_entries=self.config.reply_cache_items,
            max_bytes=self.config.reply_cache_bytes,
            max_age=self.config.reply_cache_seconds,
        )
        self.handlers = HandlerTable(node_id=directory.own.node_id, counters=self.counters, log=self._log)
        self.handlers.guard(policy_check(lambda: self.directory))
        self._streams: list[PeerEventStream] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._server: Server | None = None
        self._verify_threads = self.config.verify_threads or os.cpu_count() or 1
        self._verifier: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.port: int | None = None  # the port actually listened on, once started

    # --- lifecycle -------------------------------------------------------------------------------------

    @property
    def node_id(self) -> int:
        return self.directory.own.node_id

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._loop is not None:
            raise RuntimeError("node already started")
        self._loop = asyncio.get_running_loop()
        self._verifier = ThreadPoolExecutor(
            self._verify_threads, thread_name_prefix=f"p2p-{self.node_id}-verify"
        )
        if self.config.listen:
            host = self.config.host if self.config.host is not None else str(self.directory.own.address)
            port = self.config.port if self.config.port is not None else self.directory.own.port
            self._server = await serve(self._accept, host, port, **self._ws_options())
            self.port = self._server.sockets[0].getsockname()[1]
        for entry in self.directory:
            self._add_link(entry)
        self._tasks.append(asyncio.create_task(self._tick_loop(), name=f"p2p-{self.node_id}-tick"))
        if self._directory_file is not None:
            follow = follow_directory(
                self._directory_file, self.set_directory, self.config.directory_poll_interval, self._log
            )
            self._tasks.append(asyncio.create_task(follow, name=f"p2p-{self.node_id}-dir"))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close(close_connections=False)
        tasks = list(self._tasks)
        for link in self._links.values():
            link.cancel_tasks()
            tasks += link.tasks + ([link.dial_task] if link.dial_task else [])
        for task in self._tasks:
            task.cancel()
        conns = list(self._connections)
        await asyncio.gather(*(self._close_ws(c) for c in conns), return_exceptions=True)
        for conn in conns:
            # a reader may be holding its connection for inbound room that will never come now
            if conn.task is not None and conn.task is not asyncio.current_task():
                conn.task.cancel()
                tasks.append(conn.task)
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        self._requests.fail_all(NodeClosed(f"node {self.node_id} closed while waiting for a reply"))
        for stream in self._streams:
            stream.close()
        self._streams.clear()
        if self._verifier is not None:
            self._verifier.shutdown(wait=False, cancel_futures=True)

    def _ws_options(self) -> dict[str, Any]:
        return {
            "compression": None,  # payloads are compressed above the threshold by the codec
            "max_size": self.config.max_frame_bytes,
            "max_queue": self.config.ws_max_queue,
            "ping_interval": None,  # heartbeats are the session's, inside the sealed stream
            "close_timeout": 1.0,
        }

    # --- handlers --------------------------------------------------------------------------------------

    def handle(
        self, message_type: str, handler: Handler | BatchHandler | None = None, *, batch: bool = False
    ) -> Any:
        """Register `handler` for `message_type`; usable as a decorator: `@node.handle("x")`. A handler
        is `async def handler(message) -> reply`; the reply goes back when the sender made a request.
        With `batch=True` it is `async def handler(messages: list[Message])`, called once for many
        messages of its type from one peer (docs/p2p.md, "Batch handlers")."""
        return self.handlers.handle(message_type, handler, batch=batch)

    def handle_any(self, handler: Handler | BatchHandler, *, batch: bool = False) -> Any:
        """The handler for every type without its own (with `batch`, taking lists of messages)."""
        return self.handlers.handle_any(handler, batch=batch)

    def use(self, middleware: Middleware) -> None:
        """Add a middleware around every handler; the first added is the outermost."""
        self.handlers.use(middleware)

    # --- what a program reads ---------------------------------------------------------------------------

    @property
    def connected_peers(self) -> set[int]:
        return {node_id for node_id, link in self._links.items() if link.up}

    def peer_events(self) -> PeerEventStream:
        """Follow peer up/down events from now on: `async for event in node.peer_events(): ...`."""
        stream = PeerEventStream()
        self._streams.append(stream)
        return stream

    def recent(self, message_id: bytes) -> Message | None:
        """A message from the history (sent or received), or None when it is not (or no longer) kept."""
        return self.history.get(message_id, self._clock())

    def queued(self, peer: int) -> int:
        """How many messages wait in the send queue for `peer`."""
        return len(self._link(peer).outbox)

    async def wait_connected(self, peers: Iterable[int] | None = None, timeout: float = 10.0) -> None:
        """Wait until every peer in `peers` (default: every peer in the directory) is connected;
        TimeoutError naming the missing ones otherwise."""
        wanted = set(peers) if peers is not None else set(self._links)
        for peer in wanted:
            self._link(peer)
        try:
            async with asyncio.timeout(timeout):
                while missing := wanted - self.connected_peers:
                    await self._links[next(iter(missing))].connected.wait()
        except TimeoutError:
            names = ", ".join(
                self._links[p].entry.describe()
                for p in sorted(wanted - self.connected_peers)
                if p in self._links
            )
            raise TimeoutError(f"not connected within {timeout:g} s to {names}") from None

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until every send queue has been written out; SendTimeout naming the peers whose queue
        is still not empty (usually: they are down)."""
        try:
            async with asyncio.timeout(timeout):
                for link in list(self._links.values()):
                    await link.outbox_idle.wait()
        except TimeoutError:
            stuck = [link.entry.describe() for link in self._links.values() if not link.outbox_idle.is_set()]
            raise SendTimeout(f"messages still queued after {timeout:g} s for {', '.join(stuck)}") from None

    # --- sending ---------------------------------------------------------------------------------------

    def _link(self, peer: int) -> PeerLink:
        link = self._links.get(peer)
        if link is None:
            if peer == self.node_id:
                raise UnknownPeer(f"node {peer} is this node")
            raise UnknownPeer(f"node {peer!r} is not in the directory")
        return link

    def _running(self) -> None:
        if self._loop is None:
            raise RuntimeError("node is not running: use `async with Node(...)` or `await node.start()`")
        if self._closed:
            raise NodeClosed(f"node {self.node_id} is closed")

    def _encode(self, data: Any) -> tuple[int, bytes]:
        try:
            return self._codec.encode(data)
        except BodyTooLarge as e:
            raise PayloadError(str(e)) from None
        except BodyError as e:
            raise PayloadError(str(e)) from None

    def _direct(
        self,
        message_type: str,
        data: Any,
        priority: int,
        flags: int = 0,
        reply_to: bytes | None = None,
        message_id: bytes | None = None,
    ) -> tuple[bytes, Item, int]:
        try:
            body_flags, body = self._codec.encode(data)
        except BodyError as e:  # BodyTooLarge included
            raise PayloadError(str(e)) from None
        if message_id is None:
            message_id = self._ids.next()
        now = self._clock()
        item = direct_item(message_id, message_type, now, priority, flags | body_flags, body, reply_to)
        if reply_to is None:
            message = new_tuple(Message, (message_type, data, now, self.node_id, message_id, priority))
            self.history.add(message, len(body), now)
        return message_id, item, len(body) + ITEM_OVERHEAD

    async def _enqueue(self, link: PeerLink, item: Item, priority: int, size: int) -> None:
        if link.push_outbox(item, priority, size):
            return
        assert self._loop is not None
        deadline = self._loop.time() + self.config.send_timeout
        if not await link.wait_outbox_room(item, priority, size, deadline):
            why = "the peer is down" if not link.up else "the peer reads slower than we send"
            raise SendTimeout(
                f"{link.entry.describe()}: send queue stayed full for {self.config.send_timeout:g} s ({why})"
            )

    async def send(
        self, peer: int, message_type: str, data: Any, *, priority: int = PRIORITY_DEFAULT
    ) -> bytes:
        """Queue a message for `peer`; returns its id. Waits while the peer's queue is full
        (SendTimeout after `config.send_timeout`)."""
        link = self._links.get(peer)
        if link is None or self._closed or self._loop is None:
            self._running()  # these raise the error that says why
            link = self._link(peer)
        # check_type and check_priority inline when they pass (once per message)
        if type(message_type) is not str or not 0 < len(message_type) <= MAX_TYPE_LEN:
            check_type(message_type)
        if type(priority) is not int or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
            check_priority(priority)
        try:
            body = self._plain_pack(data)
        except Exception:
            body = None  # _direct raises the PayloadError that says why
        if body is None or len(body) > self._plain_limit:  # to compress, too large, or not encodable
            message_id, item, size = self._direct(message_type, data, priority)
        else:  # _direct inline, the history's entry deferred (p2p/core/history.py)
            message_id = next(self._ids.stream)
            now = self._clock()
            item = (DIRECT, message_id, message_type, now, priority, 0, body, None)
            size = len(body) + ITEM_OVERHEAD
            record = self._record_sent
            record(
                (
                    message_type,
                    data,
                    now,
                    self._node_id,
                    message_id,
                    priority,
                    len(body) + ENTRY_OVERHEAD,
                    now,
                )
            )
            if len(self.history.deferred) >= 512:
                self.history.flush()
        if not link.outbox.push(item, priority, size):  # link.push_outbox inline
            await self._enqueue(link, item, priority, size)
        elif not link.poked:
            link.poke()
        return message_id

    def try_send(
        self, peer: int, message_type: str, data: Any, *, priority: int = PRIORITY_DEFAULT
    ) -> bytes | None:
        """Queue a message for `peer` only if it is connected and its queue has room, without waiting;
        the message id, or None (nothing was queued). For traffic that is useless late (heartbeats,
        elections)."""
        self._running()
        link = self._link(peer)
        check_type(message_type)
        check_priority(priority)
        if not link.up:
            return None
        message_id, item, size = self._direct(message_type, data, priority)
        return message_id if link.push_outbox(item, priority, size) else None

    async def request(
        self,
        peer: int,
        message_type: str,
        data: Any,
        *,
        priority: int = PRIORITY_DEFAULT,
        timeout: float = 5.0,
        retries: int = 0,
        idempotency_key: bytes | str | None = None,
    ) -> Any:
        """Send a request and return the reply (what the peer's handler returned). RequestTimeout when no
        reply comes within `timeout` seconds; RequestFailed when the peer answers with an error.

        With `retries`, the request is sent again (up to `retries` more times, each waiting `timeout`)
        under the same message id, and the peer runs its handler once and answers every copy. An
        `idempotency_key` makes that id the key's (the same key from this node, the same request:
        a program retrying after its own restart or in a later call is answered from the peer's reply
        cache too, within `reply_cache_seconds`); without one, the id is new for each call."""
        self._running()
        link = self._link(peer)
        check_type(message_type)
        check_priority(priority)
        if type(retries) is not int or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, got {retries!r}")
        flags = FLAG_REQUEST
        message_id = None
        if retries or idempotency_key is not None:
            flags |= FLAG_IDEMPOTENT
            if idempotency_key is not None:
                message_id = self._idempotent_id(idempotency_key)
                if message_id in self._requests:
                    raise ValueError(f"a request with idempotency key {idempotency_key!r} is already waiting")
        message_id, item, size = self._direct(message_type, data, priority, flags, message_id=message_id)
        future = self._requests.expect(message_id, peer)
        try:
            for attempt in range(retries + 1):
                try:
                    async with asyncio.timeout(timeout):
                        await self._enqueue(link, item, priority, size)
                        return await asyncio.shield(future)
                except TimeoutError:
                    if attempt == retries:
                        raise
            raise AssertionError("unreachable")
        except SendTimeout:
            raise
        except TimeoutError:
            state = "connected" if link.up else "not connected"
            tries = f" ({retries + 1} attempts)" if retries else ""
            raise RequestTimeout(
                f"no reply from {link.entry.describe()} to {message_type!r} within {timeout:g} s{tries} "
                f"(peer {state})"
            ) from None
        finally:
            self._requests.forget(message_id)

    def _idempotent_id(self, key: bytes | str) -> bytes:
        if isinstance(key, str):
            key = key.encode()
        if not isinstance(key, bytes) or not key:
            raise ValueError("idempotency_key must be a non-empty str or bytes")
        # this node's id is in it: two nodes using the same key name two requests
        return hashlib.blake2b(
            self.node_id.to_bytes(8, "big") + key, digest_size=16, person=b"wgm-p2p-idem"
        ).digest()

    async def broadcast(self, message_type: str, data: Any, *, priority: int = PRIORITY_DEFAULT) -> bytes:
        """Send a signed message to every connected peer; peers relay it (up to `gossip_ttl` hops, each
        node delivering it once) so it also reaches nodes this one has no connection to."""
        self._running()
        check_type(message_type)
        check_priority(priority)
        flags, body = self._encode(data)
        message_id = self._ids.next()
        now = self._clock()
        # signed by each peer's writer with the other broadcasts of its frame (one signature a frame)
        item = local_gossip_item(self.config.gossip_ttl, message_id, message_type, now, priority, flags, body)
        self.history.add(Message(message_type, data, now, self.node_id, message_id, priority), len(body), now)
        size = len(body) + ITEM_OVERHEAD
        full: list[str] = []
        for link in [link for link in self._links.values() if link.up]:
            if link.push_outbox(item, priority, size):
                continue
            try:
                await self._enqueue(link, item, priority, size)
            except SendTimeout:
                full.append(link.entry.describe())
        if full:
            raise SendTimeout(f"broadcast not queued for {', '.join(full)}: send queue full")
        return message_id

    # --- directory -------------------------------------------------------------------------------------

    def set_directory(self, directory: Directory) -> None:
        """Replace the directory: links are added, removed, or reconnected when a peer's address or key
        changed. ValueError (and nothing changes) when the new directory is not for this node."""
        old = self.directory
        if directory.own.node_id != old.own.node_id:
            raise ValueError(
                f"new directory is for node {directory.own.node_id}, this is node {old.own.node_id}"
            )
        _check_identity(directory, self.identity)
        if directory.own != old.own and (directory.own.address, directory.own.port) != (
            old.own.address,
            old.own.port,
        ):
            self._log.warning("this node's own address changed in the directory; restart to listen there")
        self.directory = directory
        self._admission.directory = directory
        if self._loop is None:
            return
        for node_id in list(self._links):
            if directory.peers.get(node_id) is None:
                self._remove_link(node_id, "removed from the directory")
        for entry in directory:
            link = self._links.get(entry.node_id)
            if link is None:
                self._add_link(entry)
                continue
            before = link.entry
            link.entry = entry
            if (before.identity_public_key, before.address, before.port) != (
                entry.identity_public_key,
                entry.address,
                entry.port,
            ):
                if link.connection is not None:
                    link.connection.reason = "its address or key changed in the directory"
                    link.connection.abort()
                self._restart_dialing(link)

    # --- links -----------------------------------------------------------------------------------------

    def _dials(self, entry: DirectoryEntry) -> bool:
        return not self.config.listen or self.node_id < entry.node_id

    def _add_link(self, entry: DirectoryEntry) -> None:
        cfg = self.config
        link = PeerLink(
            entry=entry,
            outbox=BoundedPriorityQueue(cfg.send_queue_items, cfg.send_queue_bytes),
            inbox=BoundedPriorityQueue(cfg.inbound_queue_items, cfg.inbound_queue_bytes),
        )
        self._links[entry.node_id] = link
        name = f"p2p-{self.node_id}-{entry.node_id}"
        link.tasks.append(asyncio.create_task(self._write_loop(link), name=f"{name}-write"))
        for i in range(cfg.handlers_per_peer):
            link.tasks.append(asyncio.create_task(self._work_loop(link), name=f"{name}-handle{i}"))
        self._restart_dialing(link)

    def _restart_dialing(self, link: PeerLink) -> None:
        if link.dial_task is not None:
            link.dial_task.cancel()
            link.dial_task = None
        if self._dials(link.entry):
            link.dial_task = asyncio.create_task(
                self._dial_loop(link), name=f"p2p-{self.node_id}-{link.node_id}-dial"
            )

    def _remove_link(self, node_id: int, reason: str) -> None:
        link = self._links.pop(node_id)
        link.cancel_tasks()
        conn = link.connection
        if conn is not None:
            conn.reason = reason
            conn.abort()
            link.connection = None
            self._emit(PeerDown(link.entry, reason))
        self._admission.replay.forget_origin(node_id)
        self._requests.fail_peer(node_id, RequestFailed(f"{link.entry.describe()} was {reason}"))

    def _emit(self, event: PeerEvent) -> None:
        if isinstance(event, PeerUp):
            self._log.info("%s is up", event.peer.describe())
        else:
            self._log.info("%s is down: %s", event.peer.describe(), event.reason)
        for stream in self._streams:
            stream.put(event)

    def _attach(self, conn: PeerConnection, peer: DirectoryEntry) -> PeerLink | None:
        link = self._links.get(peer.node_id)
        if link is None or link.entry.identity_public_key != peer.identity_public_key:
            conn.reason = "the directory changed during the handshake"
            return None
        old = link.connection
        link.connection = conn
        link.disconnected.clear()
        link.connected.set()
        link.outbox_ready.set()
        if old is not None:
            # The newest connection wins: a restarted peer replaces its half-open predecessor.
            old.reason = "replaced by a newer connection from the same peer"
            old.abort()
        else:
            self._emit(PeerUp(link.entry))
        return link

    def _detach(self, link: PeerLink, conn: PeerConnection) -> None:
        if link.connection is not conn:
            return
        link.connection = None
        link.connected.clear()
        link.disconnected.set()
        if self._links.get(link.node_id) is link and not self._closed:
            self._emit(PeerDown(link.entry, conn.reason or "connection closed"))

    # --- connections -----------------------------------------------------------------------------------

    def _new_session_inputs(self) -> dict[str, Any]:
        assert self._loop is not None
        return {
            "own_key": self.identity,
            "directory": self.directory,
            "nonce": os.urandom(16),
            "ephemeral": os.urandom(32),
            "now": self._loop.time(),
            "counters": self.counters,
            "limits": self._limits,
        }

    async def _accept(self, ws: ServerConnection) -> None:
        if self._closed:
            await ws.close(1001, "node closing")
            return
        source = str(ws.remote_address[0]) if ws.remote_address else "?"
        decision = admit_handshake(
            list(self._inbound_handshakes.values()),
            source,
            self.config.max_handshakes_per_source,
            self.config.max_pending_handshakes,
        )
        if not decision.admitted:
            if decision.verdict is GateVerdict.REFUSE_SOURCE:
                self.counters.refused_busy_source += 1
            else:
                self.counters.refused_all_slots += 1
            self.refused_sources[source] += 1
            await ws.close(1013, decision.verdict.value)
            return
        if decision.displace is not None:
            victim = list(self._inbound_handshakes)[decision.displace]
            del self._inbound_handshakes[victim]
            self.counters.displaced_handshake += 1
            victim.reason = "handshake displaced: its address held the most unfinished handshakes"
            victim.abort()
        session = Session.listener(**self._new_session_inputs())
        conn = PeerConnection(ws, session, dialed=False)
        self._inbound_handshakes[conn] = source
        await self._run_connection(conn)

    async def _dial_loop(self, link: PeerLink) -> None:
        attempt = 0
        while True:
            if link.connection is not None:
                await link.disconnected.wait()
                attempt = 0
                await asyncio.sleep(self._backoff.delay(0, self._random.random()))
                continue
            opened = False
            entry = link.entry
            try:
                ws = await connect(
                    entry.url(), open_timeout=self.config.handshake_timeout, proxy=None, **self._ws_options()
                )
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed) as e:
                if attempt == 0:
                    self._log.info("cannot reach %s: %s", entry.describe(), e or type(e).__name__)
            except Exception:
                self._log.exception("dialing %s failed unexpectedly", entry.describe())
            else:
                session, hello = Session.dialer(peer=entry, **self._new_session_inputs())
                conn = PeerConnection(ws, session, dialed=True)
                try:
                    await ws.send(hello)
                except ConnectionClosed:
                    pass
                else:
                    opened = await self._run_connection(conn)
            if opened:
                attempt = 0
            delay = self._backoff.delay(attempt, self._random.random())
            attempt += 1
            await asyncio.sleep(delay)

    async def _run_connection(self, conn: PeerConnection) -> bool:
        """Read frames until the connection ends; True when it was authenticated at some point."""
        assert self._loop is not None
        self._connections.add(conn)
        conn.task = asyncio.current_task()
        session = conn.session
        loop_time = self._loop.time
        try:
            async for frame in conn.ws:
                if type(frame) is not bytes:
                    self.counters.malformed += 1
                    conn.reason = "peer sent a text frame"
                    break
                await self._on_session_events(conn, session.receive(frame, loop_time()))
                if session.state is SessionState.CLOSED:
                    break
        except ConnectionClosed as e:
            if e.sent is not None and e.sent.code == 1009:
                self.counters.oversized += 1
                conn.reason = "peer sent a frame above the size limit"
            elif conn.reason is None:
                conn.reason = "connection lost"
        except Exception as e:
            # A bug must cost one connection (which is redialed), never the node.
            self._log.exception("connection failed unexpectedly")
            conn.reason = f"internal error: {type(e).__name__}"
        finally:
            self._connections.discard(conn)
            self._inbound_handshakes.pop(conn, None)
            session.close()
            link = conn.link
            if link is not None:
                self._detach(link, conn)
            if conn.reason and link is None and not self._closed:
                self._log.info("connection refused or failed: %s", conn.reason)
            await self._close_ws(conn)
        return link is not None

    async def _on_session_events(self, conn: PeerConnection, events: list[Event]) -> None:
        """The one place what a session asks for is done, whether a frame (its reader) or time (the
        tick) produced it. Before `Opened` the connection has no link and only handshake events come."""
        link = conn.link
        admitted = iter(await self._admit_gossip(link, events) if link is not None else ())
        admit_direct, now = self._admission.direct, self._clock()  # a frame's messages arrive together
        queued = False  # direct messages pushed to the inbox without waking its handler yet
        for event in events:
            if isinstance(event, DirectRun):
                assert link is not None
                run = self._admission.direct_run(event, link.entry, now)
                if run is not None:
                    size = event.size * len(run.messages)
                    if link.inbox.push(run, event.priority, size):
                        queued = True
                    else:
                        await link.wait_inbox_room(run, size, conn)
            elif isinstance(event, Envelope):
                assert link is not None
                if event.reply_to is not None:
                    self._on_reply(link, event)
                    continue
                if event.flags & FLAG_IDEMPOTENT and not self._first_copy(link, event):
                    continue
                # the common case inline: no coroutine per message, the handler woken once a frame
                delivery = admit_direct(event, link.entry, now)
                if delivery is not None:
                    if link.inbox.push(delivery, event.priority, len(event.body)):
                        queued = True
                    else:
                        await link.wait_inbox_room(delivery, len(event.body), conn)  # wakes it
            elif isinstance(event, GossipArrived):
                assert link is not None
                for delivery, size in self._on_gossip(link, event, next(admitted)):
                    if not link.push_inbox(delivery, size):
                        await link.wait_inbox_room(delivery, size, conn)
            elif isinstance(event, HeartbeatDue):
                if link is not None and link.connection is conn:
                    link.push_outbox(event.item, PRIORITY_MAX, HEARTBEAT_SIZE)
            elif isinstance(event, Outgoing):
                await conn.ws.send(event.frame)
            elif isinstance(event, Opened):
                self._inbound_handshakes.pop(conn, None)
                link = conn.link = self._attach(conn, event.peer)
                if link is None:
                    conn.session.close()
            else:
                conn.reason = event.reason
        if queued:
            assert link is not None
            link.inbox_ready.set()

    async def _close_ws(self, conn: PeerConnection) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await conn.ws.close()

    # --- inbound ---------------------------------------------------------------------------------------

    def _on_reply(self, link: PeerLink, envelope: Envelope) -> None:
        assert envelope.reply_to is not None
        if not envelope.flags & FLAG_REPLY or not self._requests.awaits(envelope.reply_to, link.node_id):
            self.counters.unexpected_reply += 1
            return
        reply = self._admission.reply(envelope)
        if reply is not None:
            self._requests.settle(reply, f"{link.entry.describe()} answered {envelope.type!r}")

    def _first_copy(self, link: PeerLink, request: Envelope) -> bool:
        """True for the first copy of an idempotent request; a repeated one is answered from the reply
        cache (or left to the answer still being made) and counted."""
        begun = self._replies.begin(link.node_id, request.id, self._clock())
        if begun is Begun.NEW:
            return True
        self.counters.repeated_request += 1
        if begun is not Begun.RUNNING:
            item, size = begun
            if not link.push_outbox(item, request.priority, size):
                self.counters.reply_dropped += 1
        return False

    async def _admit_gossip(
        self, link: PeerLink, events: list[Event]
    ) -> list[tuple[list[tuple[Delivery, int]], int] | None]:
        """Admission of every gossip unit of one frame, in order. Signatures (one per unit) are verified
        in the thread pool, split across its threads: off the event loop, and on every core."""
        now = self._clock()
        gossip = [e for e in events if isinstance(e, GossipArrived)]
        if not gossip:
            return []
        pending = [self._admission.gossip_precheck(e.ttl, e.batch, link.entry, now) for e in gossip]
        to_verify = [p for p in pending if p is not None]
        verdicts: list[bool] = []
        if to_verify:
            assert self._loop is not None and self._verifier is not None
            chunk = -(-len(to_verify) // self._verify_threads)
            parts = [to_verify[i : i + chunk] for i in range(0, len(to_verify), chunk)]
            done = await asyncio.gather(
                *(self._loop.run_in_executor(self._verifier, verify_signatures, part) for part in parts)
            )
            verdicts = [ok for part in done for ok in part]
        results: list[tuple[list[tuple[Delivery, int]], int] | None] = []
        checked = iter(verdicts)
        now = self._clock()
        for p in pending:
            results.append(None if p is None else self._admission.gossip_accept(p, next(checked), now))
        return results

    def _on_gossip(
        self,
        link: PeerLink,
        event: GossipArrived,
        admitted: tuple[list[tuple[Delivery, int]], int] | None,
    ) -> list[tuple[Delivery, int]]:
        """Relay an admitted unit on, whole and as it came, and return its (delivery, size) pairs for
        the handler's queue."""
        if admitted is None:
            return []
        deliveries, ttl = admitted
        batch = event.batch
        if ttl > 0:
            item = batch.item(ttl)
            priority = batch.priority
            size = len(batch.signed) + ITEM_OVERHEAD
            for other in self._links.values():
                if other is link or other.node_id == batch.origin or other.connection is None:
                    continue
                if not other.push_outbox(item, priority, size):
                    self.counters.relay_dropped += len(batch.messages)
        return deliveries

    async def _work_loop(self, link: PeerLink) -> None:
        start, failed = self.handlers.start, self.handlers.failed
        pop, inbox_room = link.inbox.pop, link.inbox_room
        while True:
            delivery = pop()
            if delivery is None:
                link.inbox_ready.clear()
                await link.inbox_ready.wait()
                continue
            inbox_room.set()
            if isinstance(delivery, RunDelivery):
                await self._handle_run(delivery)
                continue
            # HandlerTable.run inline: the handler's own coroutine is the only one per message
            pending = start(delivery)
            if type(pending) is Answer:
                answer = pending
            else:
                try:
                    answer = new_tuple(Answer, (await pending, False))  # type: ignore[misc]
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    answer = failed(delivery, e)
            if delivery.expects_reply:
                await self._reply(link, delivery.message, answer.data, answer.error)

    async def _handle_run(self, run: RunDelivery) -> None:
        """A run's messages: in one call to a batch handler, else one by one (none is a request)."""
        handlers = self.handlers
        batch = handlers.batch_handler(run.messages[0].type)
        if batch is not None:
            await handlers.run_batch(batch, run)
            return
        start, failed = handlers.start, handlers.failed
        for delivery in run.deliveries():
            pending = start(delivery)
            if type(pending) is Answer:
                continue
            try:
                await pending  # type: ignore[misc]
            except asyncio.CancelledError:
                raise
            except Exception as e:
                failed(delivery, e)

    async def _reply(self, link: PeerLink, request: Message, data: Any, error: bool) -> None:
        try:
            _, item, size = self._direct(
                request.type, data, request.priority, FLAG_REPLY | (FLAG_ERROR if error else 0), request.id
            )
        except PayloadError as e:
            self.counters.handler_error += 1
            text = f"handler for {request.type!r} returned a reply that cannot be sent: {e}"
            _, item, size = self._direct(
                request.type, text, request.priority, FLAG_REPLY | FLAG_ERROR, request.id
            )
        self._replies.finish(link.node_id, request.id, item, size, self._clock())
        try:
            await self._enqueue(link, item, request.priority, size)
        except SendTimeout as e:
            self._log.warning("reply dropped: %s", e)

    # --- outbound --------------------------------------------------------------------------------------

    async def _write_loop(self, link: PeerLink) -> None:
        cfg = self.config
        assert self._loop is not None
        loop_time = self._loop.time
        node_id, sign = self.node_id, self.identity.sign
        while True:
            await link.outbox_ready.wait()
            link.outbox_ready.clear()
            link.poked = False
            while len(link.outbox):
                conn = link.connection
                if conn is None or conn.session.state is not SessionState.OPEN:
                    break
                batch = link.outbox.pop_batch(cfg.batch_items, cfg.batch_bytes)
                link.outbox_room.set()
                # Seal and send with no await between: frames must leave in sealing order.
                frame = conn.session.seal(sign_broadcasts(batch, node_id, sign), loop_time())
                try:
                    await conn.ws.send(frame)
                except ConnectionClosed:
                    self.counters.lost_in_flight += len(batch)
                except Exception:
                    self._log.exception("writing to %s failed", link.entry.describe())
                    self.counters.lost_in_flight += len(batch)
                    conn.abort()
            if not len(link.outbox):
                link.outbox_idle.set()

    async def _tick_loop(self) -> None:
        assert self._loop is not None
        interval = min(self.config.heartbeat_interval / 4, 0.25)
        while True:
            await asyncio.sleep(interval)
            now = self._loop.time()
            for conn in list(self._connections):
                events = conn.session.tick(now, held=conn.held)
                if events:
                    await self._on_session_events(conn, events)
                    if conn.session.state is SessionState.CLOSED:  # timed out: end it under its reader
                        conn.abort()
            self.history.prune(self._clock())


def _check_identity(directory: Directory, identity: IdentityPrivateKey) -> None:
    if identity.public_key() != directory.own.identity_public_key:
        raise ValueError(
            f"the identity key does not match the directory's self entry (node {directory.own.node_id}): "
            "wrong --identity-key or a stale directory"
        )
