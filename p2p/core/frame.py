"""The p2p wire format, defined once. Every WebSocket binary message is one frame.

    frame      = version byte | msgpack array                  (handshake frames)
               | version byte | AES-256-GCM(msgpack array) | 16-byte tag   (once the session is open,
                 session.py: the data frames are encrypted)
    handshake  = [HELLO, client_id, server_id, client_nonce, client_ephemeral]
                 [CHALLENGE, server_id, server_nonce, server_ephemeral, server_signature]
                 [PROOF, client_signature]
                 [REJECT, reason]
    data frame = [item, ...]   several messages per frame when the send queue has a backlog
    item       = [DIRECT, id, type, timestamp, priority, flags, body, reply_to | nil]
               | [GOSSIP, ttl, signed, signature]        one relayable message
               | [GOSSIP_BATCH, ttl, batch, signature]   1..MAX_BATCH_MESSAGES relayable messages of one origin
               | [DIRECT_RUN, type, priority, ids, timestamps, data]
                                 2..MAX_RUN_MESSAGES plain direct messages of one type and priority
               | [PING]           a heartbeat beacon, sent after an interval with nothing else sent
    signed     = msgpack [version, id, type, origin, timestamp, priority, flags, body]
    batch      = msgpack [version, origin, [[id, type, timestamp, priority, flags, body], ...]]

A DIRECT item has no sender field: the sender is the peer the session authenticated, so it cannot be
forged. A GOSSIP item carries its origin inside `signed`, signed by the origin's identity key over
GOSSIP_DOMAIN + signed; a GOSSIP_BATCH item carries its origin inside `batch`, and ONE signature by the
origin over GOSSIP_BATCH_DOMAIN + batch covers every message in it (the domains keep a single message's
signature from passing for a batch's and back). Relays forward `signed`/`batch` and `signature`
untouched, as one unit, and only lower `ttl`: a relay can neither split, merge, change nor re-sign
them, and a recipient verifies one signature per unit, whatever the path. Every message in a batch
keeps its own id and timestamp, so de-duplication and the replay window work per message as before.
An origin sends the broadcasts that leave in one frame as one batch (one signature), and a broadcast
sent alone as a GOSSIP item: nothing waits for a batch to fill.
`body` is the msgpack-encoded data, zstd-compressed when `flags & FLAG_COMPRESSED` (see codec.py).

A DIRECT_RUN item is how consecutive DIRECT items of a frame with the same type and priority, flags 0
(uncompressed, neither request nor reply) and no reply_to leave: `ids` is their 16-byte ids end to end,
`timestamps` an array of their timestamps, and `data` an array of their decoded data (each message's
`body` placed as it is: a body is the msgpack encoding of its data). The receiver decodes a run with
the frame's one msgpack call and no per-message header; every message keeps its own id and timestamp,
so de-duplication works per message as before. The sender is still the session's peer.

Version history (PROTOCOL_VERSION):
  1  2025-11-24  first version.
     2026-12-02  flag FLAG_IDEMPOTENT on requests (absent: the request is sent once); a receiver that
                 does not know a flag ignores it, so nodes without it run every copy as a new request.
  2  2026-12-02  GOSSIP_BATCH items (one origin signature over many broadcasts). Version 1 nodes would
                 count them as malformed and lose those broadcasts, so the handshake refuses them.
  3  2026-12-02  DIRECT_RUN items (many direct messages under one header), and data frames encrypted
                 with AES-256-GCM instead of a BLAKE2b MAC. Version 2 nodes could read neither, so the
                 handshake refuses them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack

from p2p.core.message import MAX_TYPE_LEN, MESSAGE_ID_LEN, PRIORITY_MAX, PRIORITY_MIN

PROTOCOL_VERSION = 3
VERSION_BYTE = bytes([PROTOCOL_VERSION])
MAC_LEN = 16  # the AES-GCM tag ending a data frame
GOSSIP_DOMAIN = b"wgmesh-p2p-gossip-v1\n"
GOSSIP_BATCH_DOMAIN = b"wgmesh-p2p-gossip-batch-v1\n"
MAX_BATCH_MESSAGES = 1024  # messages in one GOSSIP_BATCH; more is refused as oversized
MAX_RUN_MESSAGES = 4096  # messages in one DIRECT_RUN; more is refused as oversized

# handshake frame kinds
HELLO = 10
CHALLENGE = 11
PROOF = 12
REJECT = 13
# item kinds
DIRECT = 0
GOSSIP = 1
PING = 2
GOSSIP_BATCH = 3
DIRECT_RUN = 4
# Never on the wire: one of this node's broadcasts waiting in a send queue, signed by the writer
# together with the others of its frame (`sign_broadcasts`).
# [LOCAL_GOSSIP, ttl, id, type, timestamp, priority, flags, body]
LOCAL_GOSSIP = -1

# flags (FLAG_COMPRESSED = 1 lives in codec.py)
FLAG_REQUEST = 2  # the sender waits for a reply
FLAG_REPLY = 4  # reply_to names the request
FLAG_ERROR = 8  # a reply whose body is an error text, not the handler's result
FLAG_IDEMPOTENT = 16  # a request the sender may send again under the same id: run it once, answer every copy

# An item array of a data frame (the `item` grammar above), as queued for a peer and sealed. Built only
# by `direct_item`, `SignedBatch.item`, `local_gossip_item` and PING_ITEM, never by hand.
# Items built here are tuples: a tuple of plain values is untracked by the garbage collector, so the
# thousands a backlogged send queue holds cost its collections nothing (lists would, measured ~30% of
# the sender's CPU). Received items are msgpack's lists.
Item = tuple[Any, ...] | list[Any]
PING_ITEM: Item = (PING,)


class FrameError(ValueError):
    """A frame or item does not follow the format; the message says what is wrong."""


class BatchTooLarge(FrameError):
    """A GOSSIP_BATCH holds more than MAX_BATCH_MESSAGES messages (a DIRECT_RUN more than MAX_RUN_MESSAGES)."""


# tuple.__new__(NamedTupleClass, (fields...)) builds a NamedTuple without the Python-level __new__ the
# class call goes through: ~0.1 us against ~0.5 us. Used where one is built per message.
new_tuple = tuple.__new__


class Envelope(NamedTuple):
    """A direct message as it travels; the sender is the session's peer. Immutable (a NamedTuple: built
    once per message, with `new_tuple` on the hot paths)."""

    id: bytes
    type: str
    timestamp: float
    priority: int
    flags: int
    body: bytes
    reply_to: bytes | None = None

    def item(self) -> Item:
        return direct_item(*self)


def direct_item(
    id: bytes, type: str, timestamp: float, priority: int, flags: int, body: bytes, reply_to: bytes | None
) -> Item:
    """The DIRECT item of a message (what `Envelope.item` gives, without building the Envelope)."""
    return (DIRECT, id, type, timestamp, priority, flags, body, reply_to)


@dataclass(slots=True)
class GossipMessage:
    """One relayable message, as signed by its origin (the origin is its unit's). Never mutated."""

    id: bytes
    type: str
    timestamp: float
    priority: int
    flags: int
    body: bytes


@dataclass(frozen=True, slots=True)
class SignedBatch:
    """A unit of relayable messages under one origin signature: a GOSSIP item (one message) or a
    GOSSIP_BATCH item. Relayed as it came (`item`), never split."""

    kind: int  # GOSSIP or GOSSIP_BATCH
    origin: int
    messages: list[GossipMessage]
    signed: bytes  # `signed` or `batch`: the bytes the signature covers, after the domain
    signature: bytes

    def signing_input(self) -> bytes:
        return (GOSSIP_DOMAIN if self.kind == GOSSIP else GOSSIP_BATCH_DOMAIN) + self.signed

    @property
    def priority(self) -> int:
        return max(m.priority for m in self.messages)

    def item(self, ttl: int) -> Item:
        return (self.kind, ttl, self.signed, self.signature)


@dataclass(slots=True)
class DirectRun:
    """The messages of a DIRECT_RUN item as they arrived: n ids, timestamps and decoded data. `size` is
    what each message is charged in the history (its share of the frame), set by the session."""

    type: str
    priority: int
    ids: bytes  # n 16-byte ids end to end
    timestamps: list[float]
    data: list[Any]
    size: int = 0


def local_gossip_item(
    ttl: int, id: bytes, type: str, timestamp: float, priority: int, flags: int, body: bytes
) -> Item:
    """A broadcast of this node for its send queues; `sign_broadcasts` turns it into a wire item."""
    return (LOCAL_GOSSIP, ttl, id, type, timestamp, priority, flags, body)


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


def pack_items(items: list[Item]) -> bytes:
    """The msgpack array of a data frame's items, consecutive plain DIRECT items of one type and
    priority (flags 0, no reply_to) packed as one DIRECT_RUN item (see the module's grammar)."""
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    n = len(items)
    parts: list[bytes] = []
    count = 0  # items of the frame
    i = 0
    try:
        while i < n:
            item = items[i]
            count += 1
            # only items built by direct_item (tuples): their flags-0 bodies are the codec's msgpack
            if type(item) is not tuple or item[0] != DIRECT or item[5] != 0 or item[7] is not None:
                parts.append(packer.pack(item))
                i += 1
                continue
            type_, priority = item[2], item[4]
            j = i + 1
            while j < n:
                other = items[j]
                if type(other) is not tuple or other[0] != DIRECT or other[5] != 0 or other[7] is not None:
                    break
                if other[2] != type_ or other[4] != priority:
                    break
                j += 1
                if j - i == MAX_RUN_MESSAGES:
                    break
            if j - i == 1:
                parts.append(packer.pack(item))
            else:
                run = items[i:j]
                parts.append(packer.pack_array_header(6))
                parts.append(packer.pack(DIRECT_RUN))
                parts.append(packer.pack(type_))
                parts.append(packer.pack(priority))
                parts.append(packer.pack(b"".join([m[1] for m in run])))
                parts.append(packer.pack([m[3] for m in run]))
                parts.append(packer.pack_array_header(j - i))
                parts.append(b"".join([m[6] for m in run]))  # each body is its data's msgpack encoding
            i = j
        parts[0:0] = [packer.pack_array_header(count)]
    except BaseException:
        packer.reset()
        raise
    return b"".join(parts)


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


def batch_bytes(*, origin: int, messages: Sequence[Item]) -> bytes:
    """The `batch` of a GOSSIP_BATCH item; each message is [id, type, timestamp, priority, flags, body]."""
    return pack([PROTOCOL_VERSION, origin, messages])


def batch_signing_input(batch: bytes) -> bytes:
    return GOSSIP_BATCH_DOMAIN + batch


def sign_broadcasts(items: list[Item], origin: int, sign: Callable[[bytes], bytes]) -> list[Item]:
    """`items` with this node's queued broadcasts (LOCAL_GOSSIP) signed: those of one ttl as one
    GOSSIP_BATCH item in the place of the first (a lone one as a GOSSIP item). One signature per frame,
    however many broadcasts it carries; `items` is returned as it is when it holds none."""
    groups: dict[int, list[Item]] = {}
    for item in items:
        if item[0] == LOCAL_GOSSIP:
            groups.setdefault(item[1], []).append(item[2:])
    if not groups:
        return items
    out: list[Item] = []
    for item in items:
        if item[0] != LOCAL_GOSSIP:
            out.append(item)
            continue
        group = groups.pop(item[1], None)
        if group is not None:  # None: signed with the first of its ttl
            out.extend(_signed_items(item[1], group, origin, sign))
    return out


def _signed_items(ttl: int, group: list[Item], origin: int, sign: Callable[[bytes], bytes]) -> list[Item]:
    if len(group) == 1:
        id, type_, timestamp, priority, flags, body = group[0]
        signed = signed_bytes(
            id=id, type=type_, origin=origin, timestamp=timestamp, priority=priority, flags=flags, body=body
        )
        return [(GOSSIP, ttl, signed, sign(gossip_signing_input(signed)))]
    out: list[Item] = []
    for start in range(0, len(group), MAX_BATCH_MESSAGES):
        batch = batch_bytes(origin=origin, messages=group[start : start + MAX_BATCH_MESSAGES])
        out.append((GOSSIP_BATCH, ttl, batch, sign(batch_signing_input(batch))))
    return out


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
    if type(timestamp) is int:
        timestamp = float(timestamp)
    return new_tuple(Envelope, (id, type_, timestamp, priority, flags, body, reply_to))


def _check_gossip_item(item: Item) -> tuple[int, bytes, bytes]:
    if len(item) != 4:
        raise FrameError("gossip item must have 4 fields")
    _, ttl, signed, signature = item
    if type(ttl) is not int or ttl < 0:
        raise FrameError("ttl must be a non-negative integer")
    if type(signed) is not bytes or type(signature) is not bytes or len(signature) != 64:
        raise FrameError("gossip item must carry signed bytes and a 64-byte signature")
    return ttl, signed, signature


def _check_origin(version: object, origin: object) -> None:
    if version != PROTOCOL_VERSION:
        raise FrameError(f"signed part has protocol version {version!r}, expected {PROTOCOL_VERSION}")
    if type(origin) is not int or origin < 1:
        raise FrameError("origin must be a positive node id")


def parse_gossip(item: Item) -> tuple[int, SignedBatch]:
    """(ttl, unit of one message) of a GOSSIP item. The signature is NOT checked here."""
    ttl, signed, signature = _check_gossip_item(item)
    inner = unpack(signed)
    if type(inner) is not list or len(inner) != 8:
        raise FrameError("signed part must be an array of 8 fields")
    version, id, type_, origin, timestamp, priority, flags, body = inner
    _check_origin(version, origin)
    _check_common(id, type_, timestamp, priority, flags, body)
    message = GossipMessage(id, type_, float(timestamp), priority, flags, body)
    return ttl, SignedBatch(GOSSIP, origin, [message], signed, signature)


def parse_gossip_batch(item: Item) -> tuple[int, SignedBatch]:
    """(ttl, unit) of a GOSSIP_BATCH item: every message is checked, one bad message refuses the whole
    batch (it is one signed unit). BatchTooLarge above MAX_BATCH_MESSAGES. The signature is NOT
    checked here."""
    ttl, batch, signature = _check_gossip_item(item)
    inner = unpack(batch)
    if type(inner) is not list or len(inner) != 3:
        raise FrameError("batch must be an array of 3 fields")
    version, origin, entries = inner
    _check_origin(version, origin)
    if type(entries) is not list or not entries:
        raise FrameError("batch must hold a non-empty array of messages")
    if len(entries) > MAX_BATCH_MESSAGES:
        raise BatchTooLarge(f"batch holds {len(entries)} messages, the limit is {MAX_BATCH_MESSAGES}")
    messages = []
    for entry in entries:
        if type(entry) is not list or len(entry) != 6:
            raise FrameError("batch message must be an array of 6 fields")
        id, type_, timestamp, priority, flags, body = entry
        _check_common(id, type_, timestamp, priority, flags, body)
        messages.append(GossipMessage(id, type_, float(timestamp), priority, flags, body))
    return ttl, SignedBatch(GOSSIP_BATCH, origin, messages, batch, signature)


def parse_direct_run(item: Item) -> DirectRun:
    """The messages of a DIRECT_RUN item; one bad field refuses the whole item (BatchTooLarge above
    MAX_RUN_MESSAGES). Its data is already decoded (by the frame's msgpack call)."""
    if len(item) != 6:
        raise FrameError("direct run must have 6 fields")
    _, type_, priority, ids, timestamps, data = item
    if type(type_) is not str or not 0 < len(type_) <= MAX_TYPE_LEN:
        raise FrameError("message type must be a string of 1-64 characters")
    if type(priority) is not int or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise FrameError("priority must be an integer 1..10")
    if type(data) is not list or type(timestamps) is not list or type(ids) is not bytes:
        raise FrameError("direct run must carry ids (bytes), timestamps and data (arrays)")
    n = len(data)
    if n > MAX_RUN_MESSAGES:
        raise BatchTooLarge(f"direct run holds {n} messages, the limit is {MAX_RUN_MESSAGES}")
    if not n or len(timestamps) != n or len(ids) != n * MESSAGE_ID_LEN:
        raise FrameError("direct run must hold as many 16-byte ids and timestamps as messages, at least one")
    for ts in timestamps:
        if type(ts) is not float:
            if type(ts) is not int:
                raise FrameError("timestamp must be a number")
            timestamps = [float(t) for t in timestamps]
            break
    return DirectRun(type_, priority, ids, timestamps, data)
