"""The connection state machine: mutual authentication, MAC'd frames, heartbeats. Driven with bytes and
`now` only: no sockets."""

from __future__ import annotations

import os
from ipaddress import IPv4Address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keys.types import IdentityPrivateKey
from p2p.core.counters import Counters
from p2p.core.directory import Directory, DirectoryEntry
from p2p.core.frame import (
    DIRECT,
    DIRECT_RUN,
    FLAG_REQUEST,
    HELLO,
    MAX_RUN_MESSAGES,
    PING_ITEM,
    VERSION_BYTE,
    DirectRun,
    Envelope,
    pack,
)
from p2p.core.session import (
    Closed,
    GossipArrived,
    HeartbeatDue,
    Opened,
    Outgoing,
    Session,
    SessionLimits,
    SessionState,
)

LIMITS = SessionLimits(
    max_frame_bytes=64 * 1024, handshake_timeout=5.0, heartbeat_interval=1.0, dead_after=3.0
)
ID = bytes(16)


class Mesh:
    """Three nodes with keys and each one's directory."""

    def __init__(self) -> None:
        self.keys = {i: IdentityPrivateKey.generate() for i in (1, 2, 3)}
        self.entries = {
            i: DirectoryEntry(i, f"n{i}", IPv4Address(f"127.0.0.{i}"), "node", k.public_key())
            for i, k in self.keys.items()
        }

    def directory(self, own: int, keys: dict[int, IdentityPrivateKey] | None = None) -> Directory:
        entries = dict(self.entries)
        for i, k in (keys or {}).items():
            entries[i] = DirectoryEntry(i, f"n{i}", IPv4Address(f"127.0.0.{i}"), "node", k.public_key())
        return Directory.of(entries[own], [e for i, e in entries.items() if i != own])

    def dialer(self, own: int, peer: int, counters: Counters | None = None, key=None, directory=None):
        directory = directory or self.directory(own)
        return Session.dialer(
            own_key=key or self.keys[own],
            directory=directory,
            peer=directory.get(peer),
            nonce=os.urandom(16),
            ephemeral=os.urandom(32),
            now=0.0,
            counters=counters or Counters(),
            limits=LIMITS,
        )

    def listener(self, own: int, counters: Counters | None = None, directory=None) -> Session:
        return Session.listener(
            own_key=self.keys[own],
            directory=directory or self.directory(own),
            nonce=os.urandom(16),
            ephemeral=os.urandom(32),
            now=0.0,
            counters=counters or Counters(),
            limits=LIMITS,
        )


def frames(events):
    return [e.frame for e in events if isinstance(e, Outgoing)]


def handshake(client: Session, hello: bytes, server: Session) -> tuple[list, list]:
    """Run the three handshake frames; returns (client events, server events)."""
    challenge = server.receive(hello, 0.1)
    client_events = client.receive(frames(challenge)[0], 0.2)
    server_events = server.receive(frames(client_events)[0], 0.3)
    return client_events, server_events


@pytest.fixture
def mesh() -> Mesh:
    return Mesh()


@pytest.fixture
def pair(mesh):
    client, hello = mesh.dialer(1, 2)
    server = mesh.listener(2)
    handshake(client, hello, server)
    return client, server


def test_both_ends_learn_who_is_on_the_other_side(mesh):
    client, hello = mesh.dialer(1, 2)
    server = mesh.listener(2)
    client_events, server_events = handshake(client, hello, server)
    assert [e.peer.node_id for e in client_events if isinstance(e, Opened)] == [2]
    assert [e.peer.node_id for e in server_events if isinstance(e, Opened)] == [1]
    assert client.state is server.state is SessionState.OPEN


def test_messages_flow_both_ways_in_one_frame_each(pair):
    client, server = pair
    env = Envelope(ID, "grad", 1.0, 7, 0, b"\x01", None)
    request = env._replace(flags=FLAG_REQUEST)
    events = server.receive(client.seal([request.item(), request.item()], 1.0), 1.0)
    assert events == [request, request]
    assert client.receive(server.seal([env.item()], 1.0), 1.0) == [env]


def test_plain_messages_of_one_type_and_priority_travel_as_one_run(pair):
    client, server = pair
    ids = [bytes([n]) * 16 for n in range(4)]
    items = [Envelope(i, "grad", 1.0 + n, 7, 0, pack(f"d{n}"), None).item() for n, i in enumerate(ids)]
    other = Envelope(ID, "other", 9.0, 7, 0, pack("o"), None)
    events = server.receive(client.seal([*items[:3], other.item(), items[3]], 1.0), 1.0)
    run, alone, last = events
    assert isinstance(run, DirectRun) and (run.type, run.priority) == ("grad", 7)
    assert run.ids == b"".join(ids[:3]) and run.timestamps == [1.0, 2.0, 3.0]
    assert run.data == ["d0", "d1", "d2"] and run.size > 0
    assert alone == other
    assert last == Envelope(ids[3], "grad", 4.0, 7, 0, pack("d3"), None)  # a run of one is a direct item


@pytest.mark.parametrize(
    "item",
    [
        [DIRECT_RUN, "t", 5, ID, [1.0]],  # a field missing
        [DIRECT_RUN, "", 5, ID, [1.0], [1]],
        [DIRECT_RUN, "t", 11, ID, [1.0], [1]],
        [DIRECT_RUN, "t", 5, ID[:15], [1.0], [1]],  # ids do not match the messages
        [DIRECT_RUN, "t", 5, ID, [1.0, 2.0], [1]],
        [DIRECT_RUN, "t", 5, b"", [], []],
        [DIRECT_RUN, "t", 5, ID, ["now"], [1]],
        [DIRECT_RUN, "t", 5, "ids", [1.0], [1]],
    ],
)
def test_a_malformed_run_is_counted_and_the_rest_delivered(pair, item):
    client, server = pair
    good = Envelope(ID, "t", 1.0, 5, 0, b"abc", None)
    assert server.receive(client.seal([item, good.item()], 1.0), 1.0) == [good]
    assert server.counters.malformed == 1 and server.state is SessionState.OPEN


def test_a_run_above_the_limit_is_refused_as_too_large(pair):
    client, server = pair
    n = MAX_RUN_MESSAGES + 1
    item = [DIRECT_RUN, "t", 5, ID * n, [1.0] * n, [1] * n]
    assert server.receive(client.seal([item], 1.0), 1.0) == []
    assert server.counters.oversized == 1


def test_a_node_with_the_wrong_key_cannot_pose_as_a_directory_node(mesh):
    impostor = IdentityPrivateKey.generate()
    counters = Counters()
    client, hello = mesh.dialer(1, 2, key=impostor)
    server = mesh.listener(2, counters=counters)
    _client_events, server_events = handshake(client, hello, server)
    assert isinstance(server_events[-1], Closed) and "failed to prove" in server_events[-1].reason
    assert server.state is SessionState.CLOSED and server.peer is None
    assert counters.handshake_failed == 1


def test_the_dialer_refuses_a_listener_with_the_wrong_key(mesh):
    counters = Counters()
    # node 1 believes node 2 has another key than the one node 2 really has
    directory = mesh.directory(1, keys={2: IdentityPrivateKey.generate()})
    client, hello = mesh.dialer(1, 2, counters=counters, directory=directory)
    server = mesh.listener(2)
    events = client.receive(frames(server.receive(hello, 0.1))[0], 0.2)
    assert isinstance(events[-1], Closed) and "failed to prove" in events[-1].reason
    assert counters.handshake_failed == 1 and client.state is SessionState.CLOSED


def test_an_unknown_node_is_refused_and_told_why(mesh):
    stranger = IdentityPrivateKey.generate()
    counters = Counters()
    own = DirectoryEntry(9, "x", IPv4Address("127.0.0.9"), "node", stranger.public_key())
    directory = Directory.of(own, [mesh.entries[2]])
    client, hello = mesh.dialer(9, 2, key=stranger, directory=directory)
    server = mesh.listener(2, counters=counters)
    events = server.receive(hello, 0.1)
    assert counters.unknown_sender == 1
    assert isinstance(events[-1], Closed)
    reply = client.receive(frames(events)[0], 0.2)
    assert isinstance(reply[-1], Closed) and "unknown node 9" in reply[-1].reason


def test_dialing_the_wrong_node_is_refused(mesh):
    # node 1 dials what it thinks is node 3, but node 2 answers
    _client, hello = mesh.dialer(1, 3)
    counters = Counters()
    events = mesh.listener(2, counters=counters).receive(hello, 0.1)
    assert isinstance(events[-1], Closed) and counters.handshake_failed == 1


def test_a_recorded_handshake_cannot_be_replayed(mesh):
    client, hello = mesh.dialer(1, 2)
    first = mesh.listener(2)
    challenge = first.receive(hello, 0.1)
    proof = frames(client.receive(frames(challenge)[0], 0.2))[0]
    # an attacker replays HELLO and PROOF to a new listener: the listener's nonce is new
    counters = Counters()
    second = mesh.listener(2, counters=counters)
    second.receive(hello, 0.1)
    events = second.receive(proof, 0.2)
    assert isinstance(events[-1], Closed) and counters.handshake_failed == 1
    assert second.state is SessionState.CLOSED


def test_data_frames_are_encrypted_and_two_seals_of_the_same_items_differ(pair):
    client, server = pair
    secret = pack("the gradient nobody on the path may read")
    item = Envelope(ID, "grad", 1.0, 7, 0, secret, None).item()
    first, second = client.seal([item], 1.0), client.seal([item], 1.0)
    assert secret[1:] not in first and b"grad" not in first and first != second  # a new nonce each
    assert [e.body for e in server.receive(first, 1.0) + server.receive(second, 1.0)] == [secret, secret]


def test_a_changed_frame_fails_its_mac_and_closes(pair):
    client, server = pair
    frame = bytearray(client.seal([Envelope(ID, "t", 1.0, 5, 0, b"abc", None).item()], 1.0))
    frame[5] ^= 1
    events = server.receive(bytes(frame), 1.0)
    assert isinstance(events[-1], Closed) and server.counters.bad_mac == 1


def test_a_replayed_frame_fails_its_mac(pair):
    client, server = pair
    first = client.seal([Envelope(ID, "t", 1.0, 5, 0, b"abc", None).item()], 1.0)
    assert server.receive(first, 1.0)
    events = server.receive(first, 1.0)
    assert isinstance(events[-1], Closed) and server.counters.bad_mac == 1


def test_frames_cannot_be_reordered(pair):
    client, server = pair
    item = Envelope(ID, "t", 1.0, 5, 0, b"abc", None).item()
    client.seal([item], 1.0)
    second = client.seal([item], 1.0)
    events = server.receive(second, 1.0)
    assert isinstance(events[-1], Closed) and server.counters.bad_mac == 1


def test_a_frame_sealed_for_the_other_direction_is_refused(pair):
    _client, server = pair
    # the server's own frame reflected back at it: different direction key
    reflected = server.seal([Envelope(ID, "t", 1.0, 5, 0, b"abc", None).item()], 1.0)
    events = server.receive(reflected, 1.0)
    assert isinstance(events[-1], Closed) and server.counters.bad_mac == 1


def test_malformed_items_are_counted_and_the_rest_delivered(pair):
    client, server = pair
    good = Envelope(ID, "t", 1.0, 5, 0, b"abc", None)
    events = server.receive(client.seal([[DIRECT, b"bad"], "junk", [], [99], good.item()], 1.0), 1.0)
    assert events == [good]
    assert server.counters.malformed == 4
    assert server.state is SessionState.OPEN


def test_an_oversized_frame_is_dropped_and_the_session_goes_on(pair):
    client, server = pair
    big = client.seal([Envelope(ID, "t", 1.0, 5, 0, b"x" * (LIMITS.max_frame_bytes + 1), None).item()], 1.0)
    assert server.receive(big, 1.0) == []
    assert server.counters.oversized == 1
    env = Envelope(ID, "t", 1.0, 5, 0, b"ok", None)
    assert server.receive(client.seal([env.item()], 1.0), 1.0) == [env]


def test_garbage_before_authentication_closes_without_raising(mesh):
    for junk in [
        b"",
        b"\x07hello",
        VERSION_BYTE + b"\xc1",
        VERSION_BYTE + pack({"a": 1}),
        VERSION_BYTE + pack([HELLO, 1]),
    ]:
        counters = Counters()
        session = mesh.listener(2, counters=counters)
        events = session.receive(junk, 0.0)
        assert isinstance(events[-1], Closed), junk
        assert counters.handshake_failed + counters.malformed == 1


def test_a_version_mismatch_is_answered_with_a_reason(mesh):
    _, hello = mesh.dialer(1, 2)
    # a version 2 node (before DIRECT_RUN) is refused with the reason, not half understood
    events = mesh.listener(2).receive(b"\x02" + hello[1:], 0.0)
    assert b"protocol version 2 not supported, this node speaks 3" in frames(events)[0]


def test_data_before_the_handshake_finished_is_refused(mesh):
    session = mesh.listener(2)
    events = session.receive(VERSION_BYTE + pack([[DIRECT]]) + bytes(16), 0.0)
    assert isinstance(events[-1], Closed)


def test_handshake_times_out(mesh):
    session = mesh.listener(2)
    assert session.tick(4.9) == []
    events = session.tick(5.1)
    assert isinstance(events[0], Closed) and session.counters.handshake_failed == 1


def test_a_quiet_end_sends_beacons_and_a_silent_peer_is_declared_dead(pair):
    client, server = pair  # opened at t=0.2 (client) and t=0.3 (server)
    assert client.tick(0.5) == []
    assert client.tick(1.3) == [HeartbeatDue(PING_ITEM)]  # sent nothing for an interval
    assert client.tick(1.5) == []  # one beacon per interval
    assert server.receive(client.seal([PING_ITEM], 1.4), 1.4) == []  # a beacon is only a sign of life
    assert client.state is SessionState.OPEN
    events = client.tick(3.3)  # heard nothing since 0.2
    assert isinstance(events[0], Closed) and events[0].reason == "no heartbeat for 3.1 s"
    assert client.counters.dead_peer == 1


def test_an_end_that_keeps_sending_needs_no_beacon(pair):
    client, server = pair
    for step in range(1, 50):
        now = step / 10
        server.receive(client.seal([Envelope(ID, "t", 1.0, 5, 0, b"x", None).item()], now), now)
        assert client.tick(now) == []
        for event in server.tick(now):  # the quiet server beacons
            client.receive(server.seal([event.item], now), now)
    assert client.state is SessionState.OPEN


def test_a_receiver_busy_with_our_backlog_still_tells_us_it_is_alive(pair):
    client, server = pair
    # the client floods for 5 s; the server sends no data back, only beacons, and the client stays up
    for step in range(1, 50):
        now = step / 10
        server.receive(client.seal([Envelope(ID, "t", 1.0, 5, 0, b"x", None).item()], now), now)
        for event in server.tick(now):
            assert event == HeartbeatDue(PING_ITEM)
            client.receive(server.seal([PING_ITEM], now), now)
        client.tick(now)
    assert client.state is server.state is SessionState.OPEN
    assert client.counters.dead_peer == 0


def test_a_held_connection_is_not_declared_dead(pair):
    client, _ = pair
    # the transport stopped reading (its inbound queue is full) from t=0.3 to t=10
    events = [e for t in range(3, 100) for e in client.tick(t / 10, held=True)]
    assert events == [HeartbeatDue(PING_ITEM)] * 9  # still beaconing, once a second: nothing else is sent
    assert client.state is SessionState.OPEN and client.counters.dead_peer == 0
    assert client.tick(12.8) == [HeartbeatDue(PING_ITEM)]  # reading again; silent for 2.9 s
    assert isinstance(client.tick(13.0)[0], Closed)  # silent for more than dead_after: dead


def test_gossip_items_are_handed_up_unverified(pair):
    from p2p.core.frame import GOSSIP, signed_bytes

    client, server = pair
    signed = signed_bytes(id=ID, type="b", origin=3, timestamp=1.0, priority=5, flags=0, body=b"\x01")
    events = server.receive(client.seal([[GOSSIP, 2, signed, b"s" * 64]], 1.0), 1.0)
    assert len(events) == 1 and isinstance(events[0], GossipArrived)
    assert events[0].ttl == 2 and events[0].batch.origin == 3


def test_sealing_needs_an_open_session(mesh):
    client, _ = mesh.dialer(1, 2)
    with pytest.raises(RuntimeError, match="handshake"):
        client.seal([PING_ITEM], 1.0)


# --- whatever arrives, nothing raises ---------------------------------------------------------------------

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=70)
    | st.binary(max_size=70),
    lambda inner: st.lists(inner, max_size=9) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=30,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    frames=st.lists(
        st.binary(max_size=200) | msgpack_values.map(lambda v: VERSION_BYTE + pack(v)), max_size=4
    )
)
def test_arbitrary_bytes_before_authentication_never_raise(mesh, frames):
    session = mesh.listener(2)
    for frame in frames:
        events = session.receive(frame, 0.0)
        assert all(isinstance(e, Outgoing | Closed) for e in events)
    assert session.state is not SessionState.OPEN


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(msgpack_values, max_size=6))
def test_arbitrary_items_from_an_authenticated_peer_never_raise(pair, items):
    client, server = pair
    events = server.receive(client.seal(items, 1.0), 1.0)
    # whatever was not a valid item was counted, and the connection stays open
    assert server.state is SessionState.OPEN
    assert all(isinstance(e, Envelope | GossipArrived | DirectRun) for e in events)
    delivered = sum(len(e.data) if isinstance(e, DirectRun) else 1 for e in events)
    assert delivered + server.counters.malformed + server.counters.oversized >= sum(
        1 for i in items if i != [2]
    )
