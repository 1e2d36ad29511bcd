"""The p2p wire format and payload codec: round trips, limits, and what malformed input gets."""

from __future__ import annotations

import msgpack
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from keys.types import IdentityPrivateKey
from p2p.core.codec import FLAG_COMPRESSED, BodyCodec, BodyError, BodyTooLarge
from p2p.core.frame import (
    DIRECT,
    GOSSIP,
    GOSSIP_BATCH,
    MAX_BATCH_MESSAGES,
    PING_ITEM,
    PROTOCOL_VERSION,
    BatchTooLarge,
    Envelope,
    FrameError,
    batch_bytes,
    batch_signing_input,
    gossip_signing_input,
    local_gossip_item,
    pack,
    parse_direct,
    parse_gossip,
    parse_gossip_batch,
    sign_broadcasts,
    signed_bytes,
)

ID = bytes(range(16))

payloads = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)


@given(payloads)
def test_any_msgpack_payload_round_trips(data):
    codec = BodyCodec(max_bytes=1 << 20, threshold=64)
    flags, body = codec.encode(data)
    assert codec.decode(flags, body) == data


def test_large_compressible_payload_is_compressed_and_small_one_is_not():
    codec = BodyCodec(max_bytes=1 << 22, threshold=4096)
    flags, body = codec.encode([0.5] * 100_000)
    assert flags & FLAG_COMPRESSED and len(body) < 100_000
    assert codec.decode(flags, body) == [0.5] * 100_000
    flags, body = codec.encode("short")
    assert flags == 0


def test_incompressible_payload_is_sent_raw():
    import os

    codec = BodyCodec(max_bytes=1 << 22, threshold=16)
    data = os.urandom(50_000)
    flags, body = codec.encode(data)
    assert flags == 0 and codec.decode(flags, body) == data


def test_payload_msgpack_cannot_carry_is_refused_with_a_reason():
    codec = BodyCodec(max_bytes=1024)
    with pytest.raises(BodyError, match="cannot be encoded"):
        codec.encode({"x": object()})


def test_payload_above_limit_is_refused_on_both_sides():
    codec = BodyCodec(max_bytes=1000)
    with pytest.raises(BodyTooLarge):
        codec.encode(b"x" * 2000)
    with pytest.raises(BodyTooLarge):
        codec.decode(0, msgpack.packb(b"x" * 2000))


def test_decompression_bomb_is_refused_before_it_allocates():
    codec = BodyCodec(max_bytes=1 << 20)
    bomb = zstandard.ZstdCompressor().compress(msgpack.packb(b"\0" * (64 << 20)))
    assert len(bomb) < 10_000
    with pytest.raises(BodyTooLarge, match="declares"):
        codec.decode(FLAG_COMPRESSED, bomb)
    # the same without a declared size in the frame header
    stream = zstandard.ZstdCompressor().compressobj()
    bomb = stream.compress(b"\0" * (64 << 20)) + stream.flush()
    with pytest.raises(BodyError):
        codec.decode(FLAG_COMPRESSED, bomb)


@pytest.mark.parametrize("flags, body", [(0, b"\xc1"), (FLAG_COMPRESSED, b"not zstd"), (0, b"\x92\x01")])
def test_malformed_bodies_raise_body_error(flags, body):
    with pytest.raises(BodyError):
        BodyCodec(max_bytes=1024).decode(flags, body)


@given(
    st.text(min_size=1, max_size=64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(1, 10),
    st.integers(0, 255),
    st.binary(max_size=300),
    st.none() | st.binary(min_size=16, max_size=16),
)
def test_direct_item_round_trips(type_, ts, priority, flags, body, reply_to):
    env = Envelope(ID, type_, ts, priority, flags, body, reply_to)
    item = msgpack.unpackb(pack(env.item()))
    assert parse_direct(item) == env


@pytest.mark.parametrize(
    "item, error",
    [
        ([DIRECT, b"short", "t", 1.0, 5, 0, b"", None], "16 bytes"),
        ([DIRECT, ID, "", 1.0, 5, 0, b"", None], "type"),
        ([DIRECT, ID, "t" * 65, 1.0, 5, 0, b"", None], "type"),
        ([DIRECT, ID, "t", "now", 5, 0, b"", None], "timestamp"),
        ([DIRECT, ID, "t", 1.0, 0, 0, b"", None], "priority"),
        ([DIRECT, ID, "t", 1.0, 11, 0, b"", None], "priority"),
        ([DIRECT, ID, "t", 1.0, 5, -1, b"", None], "flags"),
        ([DIRECT, ID, "t", 1.0, 5, 0, "text", None], "body"),
        ([DIRECT, ID, "t", 1.0, 5, 0, b"", b"x"], "reply_to"),
        ([DIRECT, ID, "t"], "8 fields"),
    ],
)
def test_malformed_direct_items_name_the_problem(item, error):
    with pytest.raises(FrameError, match=error):
        parse_direct(item)


def test_gossip_item_carries_the_origin_inside_the_signed_part():
    key = IdentityPrivateKey.generate()
    signed = signed_bytes(id=ID, type="block", origin=7, timestamp=5.0, priority=9, flags=0, body=b"\x01")
    signature = key.sign(gossip_signing_input(signed))
    ttl, env = parse_gossip([GOSSIP, 3, signed, signature])
    [m] = env.messages
    assert (ttl, env.origin, m.type, m.priority, m.body) == (3, 7, "block", 9, b"\x01")
    assert key.public_key().verify(env.signature, env.signing_input())
    # the signature is over the domain-separated bytes, not the bare ones
    assert not key.public_key().verify(signature, signed)


@pytest.mark.parametrize(
    "inner, error",
    [
        ([PROTOCOL_VERSION + 1, ID, "t", 1, 1.0, 5, 0, b""], "protocol version"),
        ([PROTOCOL_VERSION, ID, "t", 0, 1.0, 5, 0, b""], "origin"),
        ([PROTOCOL_VERSION, ID, "t", 1, 1.0, 5, 0], "8 fields"),
    ],
)
def test_malformed_gossip_is_refused(inner, error):
    with pytest.raises(FrameError, match=error):
        parse_gossip([GOSSIP, 2, pack(inner), b"s" * 64])


def test_gossip_needs_a_64_byte_signature_and_msgpack_inside():
    with pytest.raises(FrameError, match="64-byte"):
        parse_gossip([GOSSIP, 2, b"x", b"short"])
    with pytest.raises(FrameError, match="not msgpack"):
        parse_gossip([GOSSIP, 2, b"\xc1", b"s" * 64])


def broadcast(n: int, ttl: int = 4, priority: int = 5) -> list:
    return local_gossip_item(ttl, n.to_bytes(16, "big"), "block", 5.0, priority, 0, bytes([n]))


def test_the_broadcasts_of_one_frame_leave_as_one_batch_under_one_signature():
    key = IdentityPrivateKey.generate()
    direct = Envelope(ID, "t", 1.0, 5, 0, b"").item()
    items = [direct, broadcast(1), PING_ITEM, broadcast(2), broadcast(3)]
    signed = sign_broadcasts(items, 7, key.sign)
    # the batch takes the place of the first broadcast; the other items keep their order
    assert [i[0] for i in signed] == [DIRECT, GOSSIP_BATCH, PING_ITEM[0]]
    ttl, batch = parse_gossip_batch(signed[1])
    assert (ttl, batch.origin, [m.body for m in batch.messages]) == (4, 7, [b"\x01", b"\x02", b"\x03"])
    assert key.public_key().verify(batch.signature, batch.signing_input())
    # the relay forwards the unit as it came, only the ttl lowered
    assert batch.item(3) == (GOSSIP_BATCH, 3, signed[1][2], signed[1][3])


def test_a_lone_broadcast_is_a_gossip_item_and_a_frame_without_any_is_untouched():
    key = IdentityPrivateKey.generate()
    [item] = sign_broadcasts([broadcast(1)], 7, key.sign)
    _, unit = parse_gossip(item)
    assert unit.kind == GOSSIP and key.public_key().verify(unit.signature, unit.signing_input())
    items = [Envelope(ID, "t", 1.0, 5, 0, b"").item()]
    assert sign_broadcasts(items, 7, key.sign) is items


def test_broadcasts_of_two_ttls_are_two_units():
    signed = sign_broadcasts(
        [broadcast(1, ttl=4), broadcast(2, ttl=1), broadcast(3, ttl=4)], 7, lambda b: b"s" * 64
    )
    assert [(i[0], i[1]) for i in signed] == [(GOSSIP_BATCH, 4), (GOSSIP, 1)]


def test_a_batch_signature_is_not_a_single_messages_and_back():
    """Domain separation: bytes signed as a batch do not verify as a single message, nor the reverse."""
    key = IdentityPrivateKey.generate()
    batch = batch_bytes(origin=7, messages=[[ID, "t", 1.0, 5, 0, b""]])
    assert not key.public_key().verify(key.sign(gossip_signing_input(batch)), batch_signing_input(batch))
    assert not key.public_key().verify(key.sign(batch_signing_input(batch)), gossip_signing_input(batch))


GOOD = [ID, "t", 1.0, 5, 0, b""]


@pytest.mark.parametrize(
    "inner, error",
    [
        ([PROTOCOL_VERSION + 1, 1, [GOOD]], "protocol version"),
        ([PROTOCOL_VERSION, 0, [GOOD]], "origin"),
        ([PROTOCOL_VERSION, 1, []], "non-empty"),
        ([PROTOCOL_VERSION, 1, "x"], "non-empty"),
        ([PROTOCOL_VERSION, 1], "3 fields"),
        ([PROTOCOL_VERSION, 1, [GOOD, GOOD[:5]]], "6 fields"),
        ([PROTOCOL_VERSION, 1, [GOOD, [ID, "t", 1.0, 11, 0, b""]]], "priority"),
        ([PROTOCOL_VERSION, 1, [GOOD, [b"short", "t", 1.0, 5, 0, b""]]], "16 bytes"),
    ],
)
def test_a_batch_with_one_bad_message_is_refused_whole(inner, error):
    with pytest.raises(FrameError, match=error):
        parse_gossip_batch([GOSSIP_BATCH, 2, pack(inner), b"s" * 64])


def test_a_batch_above_the_limit_is_refused_as_too_large():
    inner = [PROTOCOL_VERSION, 1, [GOOD] * (MAX_BATCH_MESSAGES + 1)]
    with pytest.raises(BatchTooLarge):
        parse_gossip_batch([GOSSIP_BATCH, 2, pack(inner), b"s" * 64])
    _, batch = parse_gossip_batch(
        [GOSSIP_BATCH, 2, pack([*inner[:2], [GOOD] * MAX_BATCH_MESSAGES]), b"s" * 64]
    )
    assert len(batch.messages) == MAX_BATCH_MESSAGES
