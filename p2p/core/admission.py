"""What arriving messages reach the program: the node-level checks after a session decoded them.

- A direct message comes from the session's authenticated peer: it is admitted unless its id is already
  in the history (duplicate) or its body does not decode.
- Relayed (gossip) messages come in signed units (`SignedBatch`: one message, or a batch under one
  origin signature). A message is admitted only when its origin is in the directory, its timestamp is
  in the replay window, its id is new, and its unit's Ed25519 signature by the origin verifies, checked
  in that order so the ~100 us verify is spent only on units holding a message that could be accepted,
  and once per unit however many messages it holds. A unit with an admitted message is relayed on,
  whole and as it came, with ttl - 1 while that is above zero; a unit whose messages were all seen is
  not (so copies die out). The check runs in three steps, `gossip_precheck` -> `verify_signatures` ->
  `gossip_accept`, so a transport can verify a frame's worth of signatures off its event loop and on
  several cores (verify_signatures touches no shared state); `gossip` runs all three inline.
- A reply resolves a pending request; the transport owns the pending table.
Every refusal increments one counter and returns None; nothing raises to the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any, NamedTuple

from p2p.core.codec import BodyCodec, BodyError, BodyTooLarge
from p2p.core.counters import Counters
from p2p.core.directory import Directory, DirectoryEntry
from p2p.core.frame import (
    FLAG_ERROR,
    FLAG_REQUEST,
    DirectRun,
    Envelope,
    GossipMessage,
    SignedBatch,
    new_tuple,
)
from p2p.core.history import History
from p2p.core.message import Message
from p2p.core.replay import Freshness, ReplayWindow


class Delivery(NamedTuple):
    """A message on its way to a handler, with who sent it and how it came. Immutable (a NamedTuple,
    built with `new_tuple` once per message)."""

    message: Message
    sender: DirectoryEntry  # the origin; its role is what authorization looks at
    via: int  # the peer whose connection carried it (the sender itself unless relayed)
    expects_reply: bool

    @property
    def relayed(self) -> bool:
        return self.via != self.sender.node_id


class RunDelivery(NamedTuple):
    """The admitted messages of one DIRECT_RUN on their way to the handler(s) of their type: one type,
    one priority, one sender (the session's peer), none a request. Immutable."""

    messages: list[Message]
    sender: DirectoryEntry
    via: int

    @property
    def relayed(self) -> bool:
        return False

    def deliveries(self) -> list[Delivery]:
        """One Delivery per message, for the handlers that take messages one at a time."""
        sender, via = self.sender, self.via
        return [new_tuple(Delivery, (m, sender, via, False)) for m in self.messages]


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to request `reply_to`: data, or an error text from the peer."""

    reply_to: bytes
    data: Any
    error: str | None


@dataclass(slots=True)
class PendingGossip:
    """A signed unit with messages that passed the cheap checks, waiting for its signature check."""

    ttl: int
    batch: SignedBatch
    fresh: list[GossipMessage]  # the messages that may be accepted
    origin: DirectoryEntry
    via: DirectoryEntry


def verify_signatures(pending: Sequence[PendingGossip]) -> list[bool]:
    """Each unit's origin signature, checked. Pure and thread-safe: safe to run in a worker thread
    (the Ed25519 verify releases the GIL, so threads use several cores)."""
    return [p.origin.identity_public_key.verify(p.batch.signature, p.batch.signing_input()) for p in pending]


class Admission:
    __slots__ = ("codec", "counters", "directory", "history", "replay")

    def __init__(
        self,
        *,
        directory: Directory,
        history: History,
        replay: ReplayWindow,
        codec: BodyCodec,
        counters: Counters,
    ) -> None:
        self.directory = directory
        self.history = history
        self.replay = replay
        self.codec = codec
        self.counters = counters

    def _decode(self, flags: int, body: bytes) -> tuple[bool, Any]:
        try:
            return True, self.codec.decode(flags, body)
        except BodyTooLarge:
            self.counters.oversized += 1
        except BodyError:
            self.counters.malformed += 1
        return False, None

    def direct(self, envelope: Envelope, peer: DirectoryEntry, now: float) -> Delivery | None:
        history = self.history
        if history.deferred:
            history.flush()
        if envelope.id in history.ids:
            self.counters.duplicate += 1
            return None
        try:  # _decode inline: once per message
            data = self.codec.decode(envelope.flags, envelope.body)
        except BodyTooLarge:
            self.counters.oversized += 1
            return None
        except BodyError:
            self.counters.malformed += 1
            return None
        node_id = peer.node_id
        message: Message = new_tuple(
            Message, (envelope.type, data, envelope.timestamp, node_id, envelope.id, envelope.priority)
        )
        history.add(message, len(envelope.body), now)
        return new_tuple(Delivery, (message, peer, node_id, envelope.flags & FLAG_REQUEST != 0))

    def direct_run(self, run: DirectRun, peer: DirectoryEntry, now: float) -> RunDelivery | None:
        """The messages of a run whose ids are new (each recorded in the history), or None when none
        is; every other one counted as a duplicate."""
        ids, timestamps, type_, priority, node_id = (
            run.ids,
            run.timestamps,
            run.type,
            run.priority,
            peer.node_id,
        )
        id_list = [ids[i : i + 16] for i in range(0, len(ids), 16)]
        # Message(type, data, timestamp, sender, id, priority) for each, built in C calls
        fields = zip(repeat(type_), run.data, timestamps, repeat(node_id), id_list, repeat(priority))
        messages: list[Message] = list(map(new_tuple, repeat(Message), fields))
        admitted = self.history.add_many(messages, run.size, now)
        if len(admitted) != len(messages):
            self.counters.duplicate += len(messages) - len(admitted)
            if not admitted:
                return None
        return new_tuple(RunDelivery, (admitted, peer, node_id))

    def reply(self, envelope: Envelope) -> Reply | None:
        assert envelope.reply_to is not None
        ok, data = self._decode(envelope.flags, envelope.body)
        if not ok:
            return None
        if envelope.flags & FLAG_ERROR:
            return Reply(envelope.reply_to, None, str(data)[:500])
        return Reply(envelope.reply_to, data, None)

    def gossip_precheck(
        self, ttl: int, batch: SignedBatch, via: DirectoryEntry, now: float
    ) -> PendingGossip | None:
        """The cheap checks: known origin, fresh timestamps, new ids. None (and each message counted)
        when no message of the unit could be accepted."""
        counters = self.counters
        if batch.origin == self.directory.own.node_id:
            counters.duplicate += len(batch.messages)
            return None
        origin = self.directory.peers.get(batch.origin)
        if origin is None:
            counters.unknown_sender += len(batch.messages)
            return None
        history, check = self.history, self.replay.check
        fresh: list[GossipMessage] = []
        for message in batch.messages:
            if message.id in history:
                counters.duplicate += 1
                continue
            freshness = check(batch.origin, message.id, message.timestamp, now)
            if freshness is Freshness.FRESH:
                fresh.append(message)
            elif freshness is Freshness.STALE:
                counters.stale += 1
            else:
                counters.replayed += 1
        if not fresh:
            return None
        return PendingGossip(ttl, batch, fresh, origin, via)

    def gossip_accept(
        self, pending: PendingGossip, signature_ok: bool, now: float
    ) -> tuple[list[tuple[Delivery, int]], int] | None:
        """([(delivery, body size)], ttl to relay the unit with; 0: do not relay) once the signature
        was checked; None when nothing was accepted."""
        if not signature_ok:
            self.counters.bad_signature += len(pending.fresh)
            return None
        origin, origin_id, via = pending.origin, pending.origin.node_id, pending.via.node_id
        history, replay, counters = self.history, self.replay, self.counters
        accepted: list[tuple[Delivery, int]] = []
        for message in pending.fresh:
            # Another copy may have been accepted since the precheck (two copies in one frame or batch).
            if message.id in history or (
                replay.check(origin_id, message.id, message.timestamp, now) is not Freshness.FRESH
            ):
                counters.duplicate += 1
                continue
            ok, data = self._decode(message.flags, message.body)
            if not ok:
                continue
            replay.record(origin_id, message.id, message.timestamp, now)
            delivered = Message(
                message.type, data, message.timestamp, origin_id, message.id, message.priority
            )
            history.add(delivered, len(message.body), now)
            accepted.append((Delivery(delivered, origin, via, False), len(message.body)))
        if not accepted:
            return None
        return accepted, max(0, pending.ttl - 1)

    def gossip(
        self, ttl: int, batch: SignedBatch, via: DirectoryEntry, now: float
    ) -> tuple[list[tuple[Delivery, int]], int] | None:
        """All three steps inline."""
        pending = self.gossip_precheck(ttl, batch, via, now)
        if pending is None:
            return None
        return self.gossip_accept(pending, verify_signatures([pending])[0], now)
