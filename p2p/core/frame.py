"""The p2p wire format, defined once. Every WebSocket binary message is one frame.

    frame      = version byte | msgpack array | MAC (16 bytes, only once the session is open)
    handshake  = [HELLO, client_id, server_id, client_nonce, client_ephemeral]
                 [CHALLENGE, server_id, server_nonce, server_ephemeral, server_signature]
                 [PROOF, client_signature]
                 [REJECT, reason]
    data frame = [item, ...]   several messages per frame when the send queue has a backlog
    item       = [DIRECT, id, type, timestamp, priority, flags, body, reply_to | nil]
               | [GOSSIP, ttl, signed, signature]
               | [PING]           a heartbeat beacon, sent after an interval with nothing else sent
    signed     = msgpack [version, id, type, origin, timestamp, priority, flags, body]

A DIRECT item has no sender field: the sender is the peer the session authenticated, so it cannot be
forged. A GOSSIP item carries its origin inside `signed`, signed by the origin's identity key over
GOSSIP_DOMAIN + signed; relays forward `signed` and `signature` untouched and only lower `ttl`.
`body` is the msgpack-encoded data, zstd-compressed when `flags & FLAG_COMPRESSED` (see codec.py).

Version history (PROTOCOL_VERSION):
  1  2025-11-24  first version.
     2026-12-02  flag FLAG_IDEMPOTENT on requests (absent: the request is sent once); a receiver that
                 does not know a flag ignores it, so nodes without it run every copy as a new request.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import msgpack

from p2p.core.message import MAX_TYPE_LEN, MESSAGE_ID_LEN, PRIORITY_MAX, PRIORITY_MIN

PROTOCOL_VERSION = 1
VERSION_BYTE = bytes([PROTOCOL_VERSION])
MAC_LEN = 16
GOSSIP_DOMAIN = b"wgmesh-p2p-gossip-v1\n"

# handshake frame kinds
HELLO = 10
CHALLENGE = 11
PROOF = 12
REJECT = 13
# item kinds
DIRECT = 0
GOSSIP = 1
PING = 2

# flags (FLAG_COMPRESSED = 1 lives in codec.py)
FLAG_REQUEST = 2  # the sender waits for a reply
FLAG_REPLY = 4  # reply_to names the request
FLAG_ERROR = 8  # a reply whose body is an error text, not the handler's result
FLAG_IDEMPOTENT = 16  # a request the sender may send again under the same id: run it once, answer every copy

# An item array of a data frame (the `item` grammar above), as queued for a peer and sealed. Built only
# by `Envelope.item`, `SignedEnvelope.item` and PING_ITEM, never by hand.
Item = list[Any]
PING_ITEM: Item = [PING]


class FrameError(ValueError):
    """A frame or item does not follow the format; the message says what is wrong."""


@dataclass(slots=True)
class Envelope:
    """A direct message as it travels; the sender is the session's peer. Never mutated (not declared
    frozen only because a frozen dataclass costs ~4x as much to build, once per message)."""

    id: bytes
    type: str
    timestamp: float
    priority: int
    flags: int
    body: bytes
    reply_to: bytes | None = None

    def item(self) -> Item:
        return [
            DIRECT,
            self.id,
            self.type,
            self.timestamp,
            self.priority,
            self.flags,
            self.body,
            self.reply_to,
        ]


@dataclass(frozen=True, slots=True)
class SignedEnvelope:
    """A relayable message: the fields inside `signed`, and the origin's signature over them."""

    origin: int
    id: bytes
    type: str
    timestamp: float
    priority: int
    flags: int
    body: bytes
    signed: bytes
    signature: bytes

    def item(self, ttl: int) -> Item:
        return [GOSSIP, ttl, self.signed, self.signature]


_local = threading.local()  # one Packer per thread: msgpack.packb builds one per call (~10x the cost)


def pack(obj: Any) -> bytes:
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    try:
        packed: bytes = packer.pack(obj)
    except BaseException:
        packer.reset()
        raise
    return packed


def unpack(data: bytes | memoryview) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise FrameError(f"not msgpack: {e}") from None


def signed_bytes(
    *, id: bytes, type: str, origin: int, timestamp: float, priority: int, flags: int, body: bytes
) -> bytes:
    return pack([PROTOCOL_VERSION, id, type, origin, timestamp, priority, flags, body])


def gossip_signing_input(signed: bytes) -> bytes:
    return GOSSIP_DOMAIN + signed


def _check_common(
    id: object, type_: object, timestamp: object, priority: object, flags: object, body: object
) -> None:
    if type(id) is not bytes or len(id) != MESSAGE_ID_LEN:
        raise FrameError("message id must be 16 bytes")
    if type(type_) is not str or not 0 < len(type_) <= MAX_TYPE_LEN:
        raise FrameError("message type must be a string of 1-64 characters")
    if type(timestamp) is not float and type(timestamp) is not int:
        raise FrameError("timestamp must be a number")
    if type(priority) is not int or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise FrameError("priority must be an integer 1..10")
    if type(flags) is not int or flags < 0:
        raise FrameError("flags must be a non-negative integer")
    if type(body) is not bytes:
        raise FrameError("body must be bytes")


def parse_direct(item: Item) -> Envelope:
    if len(item) != 8:
        raise FrameError("direct item must have 8 fields")
    _, id, type_, timestamp, priority, flags, body, reply_to = item
    # _check_common's tests, inline when they all pass (the common case, once per message)
    if not (
        type(id) is bytes
        and len(id) == MESSAGE_ID_LEN
        and type(type_) is str
        and 0 < len(type_) <= MAX_TYPE_LEN
        and (type(timestamp) is float or type(timestamp) is int)
        and type(priority) is int
        and PRIORITY_MIN <= priority <= PRIORITY_MAX
        and type(flags) is int
        and flags >= 0
        and type(body) is bytes
    ):
        _check_common(id, type_, timestamp, priority, flags, body)
    if reply_to is not None and (type(reply_to) is not bytes or len(reply_to) != MESSAGE_ID_LEN):
        raise FrameError("reply_to must be a 16-byte message id or nil")
    return Envelope(id, type_, float(timestamp), priority, flags, body, reply_to)


def parse_gossip(item: Item) -> tuple[int, SignedEnvelope]:
    """(ttl, envelope) of a GOSSIP item. The signature is NOT checked here."""
    if len(item) != 4:
        raise FrameError("gossip item must have 4 fields")
    _, ttl, signed, signature = item
    if type(ttl) is not int or ttl < 0:
        raise FrameError("ttl must be a non-negative integer")
    if type(signed) is not bytes or type(signature) is not bytes or len(signature) != 64:
        raise FrameError("gossip item must carry signed bytes and a 64-byte signature")
    inner = unpack(signed)
    if type(inner) is not list or len(inner) != 8:
        raise FrameError("signed part must be an array of 8 fields")
    version, id, type_, origin, timestamp, priority, flags, body = inner
    if version != PROTOCOL_VERSION:
        raise FrameError(f"signed part has protocol version {version!r}, expected {PROTOCOL_VERSION}")
    if type(origin) is not int or origin < 1:
        raise FrameError("origin must be a positive node id")
    _check_common(id, type_, timestamp, priority, flags, body)
    return ttl, SignedEnvelope(origin, id, type_, float(timestamp), priority, flags, body, signed, signature)
