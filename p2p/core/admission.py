"""What arriving messages reach the program: the node-level checks after a session decoded them.

- A direct message comes from the session's authenticated peer: it is admitted unless its id is already
  in the history (duplicate) or its body does not decode.
- A relayed (gossip) message is admitted only when its origin is in the directory, its timestamp is in
  the replay window, its id is new, and its origin's Ed25519 signature verifies, checked in that order
  so the ~100 us verify is spent only on messages that could be accepted. Admitted gossip is relayed on
  with ttl - 1 while that is above zero. The check runs in three steps, `gossip_precheck` ->
  `verify_signatures` -> `gossip_accept`, so a transport can verify a frame's worth of signatures off
  its event loop and on several cores (verify_signatures touches no shared state); `gossip` runs all
  three inline.
- A reply resolves a pending request; the transport owns the pending table.
Every refusal increments one counter and returns None; nothing raises to the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from p2p.core.codec import BodyCodec, BodyError, BodyTooLarge
from p2p.core.counters import Counters
from p2p.core.directory import Directory, DirectoryEntry
from p2p.core.frame import FLAG_ERROR, FLAG_REQUEST, Envelope, SignedEnvelope, gossip_signing_input
from p2p.core.history import History
from p2p.core.message import Message
from p2p.core.replay import Freshness, ReplayWindow


@dataclass(slots=True)
class Delivery:
    """A message on its way to a handler, with who sent it and how it came. Never mutated (not frozen:
    built once per message, see Envelope)."""

    message: Message
    sender: DirectoryEntry  # the origin; its role is what authorization looks at
    via: int  # the peer whose connection carried it (the sender itself unless relayed)
    expects_reply: bool

    @property
    def relayed(self) -> bool:
        return self.via != self.sender.node_id


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to request `reply_to`: data, or an error text from the peer."""

    reply_to: bytes
    data: Any
    error: str | None


@dataclass(slots=True)
class PendingGossip:
    """A relayed message that passed the cheap checks and waits for its signature check."""

    ttl: int
    envelope: SignedEnvelope
    origin: DirectoryEntry
    via: DirectoryEntry


def verify_signatures(pending: Sequence[PendingGossip]) -> list[bool]:
    """Each message's origin signature, checked. Pure and thread-safe: safe to run in a worker thread
    (the Ed25519 verify releases the GIL, so threads use several cores)."""
    return [
        p.origin.identity_public_key.verify(p.envelope.signature, gossip_signing_input(p.envelope.signed))
        for p in pending
    ]


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
        if envelope.id in self.history:
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
        message = Message(
            envelope.type, data, envelope.timestamp, peer.node_id, envelope.id, envelope.priority
        )
        self.history.add(message, len(envelope.body), now)
        return Delivery(message, peer, peer.node_id, bool(envelope.flags & FLAG_REQUEST))

    def reply(self, envelope: Envelope) -> Reply | None:
        assert envelope.reply_to is not None
        ok, data = self._decode(envelope.flags, envelope.body)
        if not ok:
            return None
        if envelope.flags & FLAG_ERROR:
            return Reply(envelope.reply_to, None, str(data)[:500])
        return Reply(envelope.reply_to, data, None)

    def gossip_precheck(
        self, ttl: int, envelope: SignedEnvelope, via: DirectoryEntry, now: float
    ) -> PendingGossip | None:
        """The cheap checks: known origin, fresh timestamp, new id. None (and counted) when refused."""
        if envelope.id in self.history or envelope.origin == self.directory.own.node_id:
            self.counters.duplicate += 1
            return None
        origin = self.directory.peers.get(envelope.origin)
        if origin is None:
            self.counters.unknown_sender += 1
            return None
        freshness = self.replay.check(envelope.origin, envelope.id, envelope.timestamp, now)
        if freshness is Freshness.STALE:
            self.counters.stale += 1
            return None
        if freshness is Freshness.REPLAYED:
            self.counters.replayed += 1
            return None
        return PendingGossip(ttl, envelope, origin, via)

    def gossip_accept(
        self, pending: PendingGossip, signature_ok: bool, now: float
    ) -> tuple[Delivery, int] | None:
        """(delivery, ttl to relay with; 0: do not relay) once the signature was checked."""
        envelope = pending.envelope
        if not signature_ok:
            self.counters.bad_signature += 1
            return None
        # Another copy may have been accepted since the precheck (two copies in one frame).
        if envelope.id in self.history or (
            self.replay.check(envelope.origin, envelope.id, envelope.timestamp, now) is not Freshness.FRESH
        ):
            self.counters.duplicate += 1
            return None
        ok, data = self._decode(envelope.flags, envelope.body)
        if not ok:
            return None
        self.replay.record(envelope.origin, envelope.id, envelope.timestamp, now)
        origin = pending.origin
        message = Message(
            envelope.type, data, envelope.timestamp, origin.node_id, envelope.id, envelope.priority
        )
        self.history.add(message, len(envelope.body), now)
        return Delivery(message, origin, pending.via.node_id, False), max(0, pending.ttl - 1)

    def gossip(
        self, ttl: int, envelope: SignedEnvelope, via: DirectoryEntry, now: float
    ) -> tuple[Delivery, int] | None:
        """All three steps inline."""
        pending = self.gossip_precheck(ttl, envelope, via, now)
        if pending is None:
            return None
        return self.gossip_accept(pending, verify_signatures([pending])[0], now)
