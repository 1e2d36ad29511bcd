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
    PROTOCOL_VERSION,
    Envelope,
    FrameError,
    gossip_signing_input,
    pack,
    parse_direct,
    parse_gossip,
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
    assert (ttl, env.origin, env.type, env.priority, env.body) == (3, 7, "block", 9, b"\x01")
    assert key.public_key().verify(env.signature, gossip_signing_input(env.signed))
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
