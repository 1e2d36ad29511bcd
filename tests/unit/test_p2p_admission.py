"""What reaches a handler: forged, replayed, stale, duplicate and malformed messages are dropped and
counted; good ones are delivered once and relayed on."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from keys.types import IdentityPrivateKey
from p2p.core.admission import Admission
from p2p.core.codec import FLAG_COMPRESSED, BodyCodec
from p2p.core.counters import Counters
from p2p.core.directory import Directory, DirectoryEntry
from p2p.core.frame import (
    FLAG_ERROR,
    FLAG_REPLY,
    FLAG_REQUEST,
    GOSSIP_BATCH,
    DirectRun,
    Envelope,
    batch_bytes,
    batch_signing_input,
    gossip_signing_input,
    pack,
    parse_gossip,
    parse_gossip_batch,
    signed_bytes,
)
from p2p.core.history import History
from p2p.core.replay import ReplayWindow

NOW = 1_700_000_000.0
KEYS = {i: IdentityPrivateKey.generate() for i in (1, 2, 3)}
ENTRIES = {
    i: DirectoryEntry(
        i, f"n{i}", IPv4Address(f"127.0.0.{i}"), "supervisor" if i == 3 else "worker", k.public_key()
    )
    for i, k in KEYS.items()
}


def mid(n: int) -> bytes:
    return n.to_bytes(16, "big")


@pytest.fixture
def admission() -> Admission:
    directory = Directory.of(ENTRIES[1], [ENTRIES[2], ENTRIES[3]])
    return Admission(
        directory=directory,
        history=History(max_entries=100),
        replay=ReplayWindow(60, 100),
        codec=BodyCodec(max_bytes=1 << 16),
        counters=Counters(),
    )


def gossip(
    n: int,
    *,
    origin: int = 3,
    signer: int | None = None,
    ts: float = NOW,
    body: bytes = b"\xa2hi",
    ttl: int = 3,
):
    signed = signed_bytes(
        id=mid(n), type="block", origin=origin, timestamp=ts, priority=6, flags=0, body=body
    )
    signature = KEYS[signer or origin].sign(gossip_signing_input(signed))
    return parse_gossip([1, ttl, signed, signature])


def batch(ns: list[int], *, origin: int = 3, signer: int | None = None, ts: float = NOW, ttl: int = 3):
    messages = [[mid(n), "block", ts, 6, 0, pack(n)] for n in ns]
    signed = batch_bytes(origin=origin, messages=messages)
    return parse_gossip_batch(
        [GOSSIP_BATCH, ttl, signed, KEYS[signer or origin].sign(batch_signing_input(signed))]
    )


def test_direct_message_is_delivered_with_the_peer_as_sender(admission):
    d = admission.direct(Envelope(mid(1), "grad", NOW, 7, FLAG_REQUEST, b"\x93\x01\x02\x03"), ENTRIES[2], NOW)
    assert d is not None
    assert (d.message.type, d.message.data, d.message.sender, d.message.priority) == ("grad", [1, 2, 3], 2, 7)
    assert d.expects_reply and not d.relayed and d.sender.role == "worker"
    assert admission.history.get(mid(1)) == d.message


def test_direct_duplicate_and_malformed_bodies_are_dropped_and_counted(admission):
    env = Envelope(mid(1), "t", NOW, 5, 0, b"\x01")
    assert admission.direct(env, ENTRIES[2], NOW) is not None
    assert admission.direct(env, ENTRIES[2], NOW) is None
    assert admission.direct(Envelope(mid(2), "t", NOW, 5, 0, b"\xc1"), ENTRIES[2], NOW) is None
    assert admission.direct(Envelope(mid(3), "t", NOW, 5, FLAG_COMPRESSED, b"nope"), ENTRIES[2], NOW) is None
    c = admission.counters
    assert (c.duplicate, c.malformed) == (1, 2)


def test_a_run_delivers_its_new_messages_in_order_with_the_peer_as_sender(admission):
    admission.direct(Envelope(mid(2), "t", NOW, 5, 0, pack("seen")), ENTRIES[2], NOW)
    ids = b"".join(mid(n) for n in (1, 2, 3, 1, 4))  # 2 was seen before, 1 comes twice
    run = admission.direct_run(
        DirectRun("t", 7, ids, [NOW + n for n in range(5)], list("abcde"), 50), ENTRIES[2], NOW
    )
    assert run is not None and run.sender == ENTRIES[2] and run.via == 2
    assert [(m.id, m.data, m.timestamp, m.sender, m.priority) for m in run.messages] == [
        (mid(1), "a", NOW, 2, 7),
        (mid(3), "c", NOW + 2, 2, 7),
        (mid(4), "e", NOW + 4, 2, 7),
    ]
    assert [d.message for d in run.deliveries()] == run.messages
    assert admission.counters.duplicate == 2
    assert admission.direct_run(DirectRun("t", 7, mid(3), [NOW], ["c"], 50), ENTRIES[2], NOW) is None
    assert admission.counters.duplicate == 3


def test_relayed_message_verified_against_the_origin_delivered_once_and_relayed_on(admission):
    ttl, env = gossip(1)
    [(delivery, size)], relay_ttl = admission.gossip(ttl, env, ENTRIES[2], NOW)
    assert size == 3
    assert delivery.message.sender == 3 and delivery.via == 2 and delivery.relayed
    assert delivery.sender.role == "supervisor" and delivery.message.data == "hi"
    assert relay_ttl == 2
    assert admission.gossip(ttl, env, ENTRIES[3], NOW) is None  # the copy via another path
    assert admission.counters.duplicate == 1


def test_last_hop_is_delivered_but_not_relayed(admission):
    ttl, env = gossip(1, ttl=1)
    _, relay_ttl = admission.gossip(ttl, env, ENTRIES[2], NOW)
    assert relay_ttl == 0


def test_a_relay_cannot_forge_a_message_in_another_nodes_name(admission):
    ttl, env = gossip(1, origin=3, signer=2)  # node 2 signs, claims to be node 3
    assert admission.gossip(ttl, env, ENTRIES[2], NOW) is None
    assert admission.counters.bad_signature == 1
    assert mid(1) not in admission.history  # a forgery does not block the real message
    ttl, real = gossip(1)
    assert admission.gossip(ttl, real, ENTRIES[2], NOW) is not None


def test_a_changed_body_breaks_the_signature(admission):
    ttl, env = gossip(1)
    m = env.messages[0]
    tampered_signed = signed_bytes(
        id=m.id,
        type=m.type,
        origin=env.origin,
        timestamp=m.timestamp,
        priority=m.priority,
        flags=0,
        body=b"\xa3bye",
    )
    _, tampered = parse_gossip([1, ttl, tampered_signed, env.signature])
    assert admission.gossip(ttl, tampered, ENTRIES[2], NOW) is None
    assert admission.counters.bad_signature == 1


def test_unknown_origin_stale_and_replayed_messages_are_counted_separately(admission):
    stranger = IdentityPrivateKey.generate()
    signed = signed_bytes(id=mid(9), type="x", origin=9, timestamp=NOW, priority=5, flags=0, body=b"\xc0")
    _, env = parse_gossip([1, 3, signed, stranger.sign(gossip_signing_input(signed))])
    assert admission.gossip(3, env, ENTRIES[2], NOW) is None
    ttl, old = gossip(2, ts=NOW - 61)
    assert admission.gossip(ttl, old, ENTRIES[2], NOW) is None
    ttl, future = gossip(3, ts=NOW + 61)
    assert admission.gossip(ttl, future, ENTRIES[2], NOW) is None
    # a replay after the history forgot the id is still refused by the replay window
    ttl, env = gossip(4)
    assert admission.gossip(ttl, env, ENTRIES[2], NOW) is not None
    admission.history = History(max_entries=1)
    assert admission.gossip(ttl, env, ENTRIES[2], NOW + 1) is None
    c = admission.counters
    assert (c.unknown_sender, c.stale, c.replayed, c.duplicate) == (1, 2, 1, 0)


def test_own_messages_coming_back_are_duplicates(admission):
    signed = signed_bytes(id=mid(5), type="x", origin=1, timestamp=NOW, priority=5, flags=0, body=b"\xc0")
    _, env = parse_gossip([1, 3, signed, KEYS[1].sign(gossip_signing_input(signed))])
    assert admission.gossip(3, env, ENTRIES[2], NOW) is None
    assert admission.counters.duplicate == 1


def test_replies_carry_data_or_the_peers_error(admission):
    ok = admission.reply(Envelope(mid(1), "t", NOW, 5, FLAG_REPLY, b"\x2a", mid(7)))
    assert (ok.reply_to, ok.data, ok.error) == (mid(7), 42, None)
    err = admission.reply(Envelope(mid(2), "t", NOW, 5, FLAG_REPLY | FLAG_ERROR, b"\xa4boom", mid(8)))
    assert err.error == "boom"


def test_a_batch_delivers_each_message_in_order_with_its_origin_as_sender(admission):
    ttl, unit = batch([1, 2, 3])
    deliveries, relay_ttl = admission.gossip(ttl, unit, ENTRIES[2], NOW)
    assert [(d.message.data, d.message.sender, d.via) for d, _ in deliveries] == [
        (1, 3, 2),
        (2, 3, 2),
        (3, 3, 2),
    ]
    assert all(d.sender.role == "supervisor" for d, _ in deliveries)  # what authorization looks at
    assert relay_ttl == 2
    # the same batch again (another path, or a replay): nothing delivered, nothing to relay
    assert admission.gossip(ttl, unit, ENTRIES[3], NOW) is None
    assert admission.counters.duplicate == 3


def test_a_forged_batch_delivers_nothing_and_counts_each_message(admission):
    ttl, unit = batch([1, 2], origin=3, signer=2)  # node 2 signs a batch in node 3's name
    assert admission.gossip(ttl, unit, ENTRIES[2], NOW) is None
    assert admission.counters.bad_signature == 2
    assert mid(1) not in admission.history and mid(2) not in admission.history
    ttl, real = batch([1, 2])
    assert admission.gossip(ttl, real, ENTRIES[2], NOW) is not None  # the forgery blocked nothing


def test_a_batch_partly_seen_delivers_only_the_new_messages_at_most_once(admission):
    ttl, first = batch([1, 2])
    assert admission.gossip(ttl, first, ENTRIES[2], NOW) is not None
    ttl, overlapping = batch([2, 3, 3])  # one seen, one new, and a copy of it inside the same batch
    deliveries, _ = admission.gossip(ttl, overlapping, ENTRIES[2], NOW)
    assert [d.message.data for d, _ in deliveries] == [3]
    assert admission.counters.duplicate == 2


def test_stale_and_replayed_messages_of_a_batch_are_counted_each(admission):
    ttl, old = batch([1, 2], ts=NOW - 61)
    assert admission.gossip(ttl, old, ENTRIES[2], NOW) is None
    ttl, fresh = batch([3])
    assert admission.gossip(ttl, fresh, ENTRIES[2], NOW) is not None
    admission.history = History(max_entries=1)
    admission.history.add(admission_filler(), 1, NOW)  # the history forgot message 3
    assert admission.gossip(ttl, fresh, ENTRIES[2], NOW + 1) is None
    assert (admission.counters.stale, admission.counters.replayed) == (2, 1)


def admission_filler():
    from p2p.core.message import Message

    return Message("x", None, NOW, 2, mid(99), 5)
