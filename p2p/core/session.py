"""One p2p connection as a sans-I/O state machine: mutual authentication, then encrypted and
authenticated data frames and heartbeats.

Authentication (once per connection, DESIGN "Security model"): a tunnel source address proves nothing
once routes go through a relay, so both ends prove their identity key from the directory.

    dialer   -> HELLO      client_id, server_id, nonce_c, eph_c
    listener -> CHALLENGE  server_id, nonce_s, eph_s, sign_server(transcript)
    dialer   -> PROOF      sign_client(transcript)
    transcript = pack([client_id, server_id, nonce_c, nonce_s, eph_c, eph_s])

Both signatures cover both fresh nonces, so a recorded handshake cannot be replayed. The ephemeral
X25519 keys give a shared secret only the two ends know; from it come one key per direction. Every
data frame is then sealed with AES-256-GCM under its direction's key, its sequence number as the nonce
and the version byte as associated data (frame = version byte | ciphertext | 16-byte tag): it is
encrypted, and a relay on the path can neither read, inject, change, reorder nor replay frames after
the handshake: a frame failing its tag closes the connection. A nonce is never used twice under a key
(one sequence per direction and connection, keys new for every connection). This costs ~5 us per
64 KB frame (AES-NI; a keyed BLAKE2b MAC, protocol 2, cost ~70 us), against ~100 us for an Ed25519
signature: messages on the connection need no signature of their own.

Rules:
- The transport must send frames in the order `seal` made them: one writer per connection seals and
  sends; heartbeats are handed to it as `HeartbeatDue` items.
- Heartbeats are beacons: each end asks for a PING whenever it has sent nothing for
  `heartbeat_interval`, and any received frame counts as a sign of life; after `dead_after` of silence
  the session closes (`Closed`). Beacons (rather than ping/pong) keep liveness independent of the other
  direction: a receiver working through a backlog of our data still tells us it is alive. A connection
  the transport holds unread for backpressure is ticked with `held=True`: its silence is ours.
- Nothing here raises for bad input: it is counted in `Counters` and answered with events.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keys.types import IdentityPrivateKey
from p2p.core.counters import Counters
from p2p.core.directory import Directory, DirectoryEntry
from p2p.core.frame import (
    CHALLENGE,
    DIRECT,
    DIRECT_RUN,
    GOSSIP,
    GOSSIP_BATCH,
    HELLO,
    MAC_LEN,
    PING,
    PING_ITEM,
    PROOF,
    PROTOCOL_VERSION,
    REJECT,
    VERSION_BYTE,
    BatchTooLarge,
    DirectRun,
    Envelope,
    FrameError,
    Item,
    SignedBatch,
    pack,
    pack_items,
    parse_direct,
    parse_direct_run,
    parse_gossip,
    parse_gossip_batch,
    unpack,
)

NONCE_LEN = 16
_AUTH_DOMAIN = b"wgmesh-p2p-auth-v1\n"
_SERVER_SIG = _AUTH_DOMAIN + b"server\n"
_CLIENT_SIG = _AUTH_DOMAIN + b"client\n"


@dataclass(frozen=True, slots=True)
class SessionLimits:
    max_frame_bytes: int = 8 * 1024 * 1024
    handshake_timeout: float = 5.0
    heartbeat_interval: float = 1.0
    dead_after: float = 3.5


class SessionState(Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


# --- events -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outgoing:
    """Send this frame on the connection."""

    frame: bytes


@dataclass(frozen=True, slots=True)
class Opened:
    """Both ends are authenticated; `peer` is who is on the other end."""

    peer: DirectoryEntry


@dataclass(frozen=True, slots=True)
class Closed:
    """Close the connection. The reason is for logs; counters already say what happened."""

    reason: str


@dataclass(frozen=True, slots=True)
class HeartbeatDue:
    """Queue this heartbeat item (a PING beacon) for the peer, ahead of data. Only the transport's writer
    seals data frames, so frames leave in the order they were sealed."""

    item: Item


@dataclass(slots=True)
class GossipArrived:
    """A unit of relayable messages arrived (one message, or a batch under one signature); its signature
    is checked by `Admission`, not here."""

    ttl: int
    batch: SignedBatch


# Envelope (a direct message) and DirectRun (many) are events too.
Event = Outgoing | Opened | Closed | HeartbeatDue | GossipArrived | Envelope | DirectRun


def _session_keys(shared: bytes, transcript: bytes) -> tuple[bytes, bytes]:
    """(client->server key, server->client key)."""
    digest = hashlib.blake2b(transcript, digest_size=32).digest()
    c2s = hashlib.blake2b(shared + digest, digest_size=32, person=b"wgm-p2p-c2s").digest()
    s2c = hashlib.blake2b(shared + digest, digest_size=32, person=b"wgm-p2p-s2c").digest()
    return c2s, s2c


class Session:
    """One end of one connection. Build with `Session.dialer(...)` or `Session.listener(...)`."""

    def __init__(
        self,
        *,
        own_key: IdentityPrivateKey,
        directory: Directory,
        dialing: DirectoryEntry | None,
        nonce: bytes,
        ephemeral: bytes,
        now: float,
        counters: Counters,
        limits: SessionLimits,
    ) -> None:
        if len(nonce) != NONCE_LEN or len(ephemeral) != 32:
            raise ValueError("nonce must be 16 bytes and the ephemeral key 32 bytes")
        self.state = SessionState.HANDSHAKE
        self.peer: DirectoryEntry | None = None
        self.counters = counters
        self.limits = limits
        self._own_key = own_key
        self._directory = directory
        self._dialing = dialing
        self._nonce = nonce
        self._ephemeral = x25519.X25519PrivateKey.from_private_bytes(ephemeral)
        self._ephemeral_public = self._ephemeral.public_key().public_bytes_raw()
        self._started = now
        self._last_received = now
        self._last_sent = now
        self._last_ping = -1.0
        self._send_aead: AESGCM | None = None
        self._recv_aead: AESGCM | None = None
        self._send_seq = 0
        self._recv_seq = 0
        self._pending_proof: Callable[[bytes], list[Event]] | None = None

    # --- construction ---------------------------------------------------------------------------------

    @classmethod
    def dialer(
        cls,
        *,
        own_key: IdentityPrivateKey,
        directory: Directory,
        peer: DirectoryEntry,
        nonce: bytes,
        ephemeral: bytes,
        now: float,
        counters: Counters,
        limits: SessionLimits,
    ) -> tuple[Session, bytes]:
        """A session dialing `peer`, and the HELLO frame to send first."""
        session = cls(
            own_key=own_key,
            directory=directory,
            dialing=peer,
            nonce=nonce,
            ephemeral=ephemeral,
            now=now,
            counters=counters,
            limits=limits,
        )
        hello = [HELLO, directory.own.node_id, peer.node_id, nonce, session._ephemeral_public]
        return session, VERSION_BYTE + pack(hello)

    @classmethod
    def listener(
        cls,
        *,
        own_key: IdentityPrivateKey,
        directory: Directory,
        nonce: bytes,
        ephemeral: bytes,
        now: float,
        counters: Counters,
        limits: SessionLimits,
    ) -> Session:
        """A session for an accepted connection; it waits for HELLO."""
        return cls(
            own_key=own_key,
            directory=directory,
            dialing=None,
            nonce=nonce,
            ephemeral=ephemeral,
            now=now,
            counters=counters,
            limits=limits,
        )

    # --- sending --------------------------------------------------------------------------------------

    def seal(self, items: list[Item], now: float) -> bytes:
        """A data frame carrying `items` (each an item array, e.g. `Envelope.item()`)."""
        if self.state is not SessionState.OPEN:
            raise RuntimeError(f"session is {self.state.value}, not open")
        assert self._send_aead is not None
        sealed = self._send_aead.encrypt(self._send_seq.to_bytes(12, "big"), pack_items(items), VERSION_BYTE)
        self._send_seq += 1
        self._last_sent = now
        return VERSION_BYTE + sealed

    # --- receiving ------------------------------------------------------------------------------------

    def receive(self, frame: bytes, now: float) -> list[Event]:
        if self.state is SessionState.CLOSED:
            return []
        self._last_received = now
        if len(frame) > self.limits.max_frame_bytes:
            self.counters.oversized += 1
            if self.state is SessionState.HANDSHAKE:
                return self._fail("handshake frame too large")
            # An open session keeps going: the frame is dropped, the nonce sequence moves on with it.
            self._recv_seq += 1
            return []
        if self.state is SessionState.HANDSHAKE:
            return self._receive_handshake(frame)
        return self._receive_data(frame)

    def tick(self, now: float, *, held: bool = False) -> list[Event]:
        """Timers: handshake timeout, heartbeat beacons, dead-peer detection.

        `held`: the transport has stopped reading this connection on purpose (backpressure: the inbound
        queue is full). The silence is then ours, not the peer's, so the dead-peer timer restarts."""
        if self.state is SessionState.HANDSHAKE:
            if now - self._started > self.limits.handshake_timeout:
                self.counters.handshake_failed += 1
                self.state = SessionState.CLOSED
                return [Closed(f"handshake not finished within {self.limits.handshake_timeout:g} s")]
            return []
        if self.state is SessionState.CLOSED:
            return []
        if held:
            self._last_received = now
        silent = now - self._last_received
        if silent > self.limits.dead_after:
            self.counters.dead_peer += 1
            self.state = SessionState.CLOSED
            return [Closed(f"no heartbeat for {silent:.1f} s")]
        interval = self.limits.heartbeat_interval
        # one beacon per interval at most: a writer stuck behind backpressure must not pile them up
        if now - self._last_sent >= interval and now - self._last_ping >= interval:
            self._last_ping = now
            return [HeartbeatDue(PING_ITEM)]
        return []

    def close(self) -> None:
        self.state = SessionState.CLOSED

    # --- internals ------------------------------------------------------------------------------------

    def _fail(self, reason: str, *, reject: str | None = None) -> list[Event]:
        self.state = SessionState.CLOSED
        events: list[Event] = []
        if reject is not None:
            events.append(Outgoing(VERSION_BYTE + pack([REJECT, reject])))
        events.append(Closed(reason))
        return events

    def _receive_handshake(self, frame: bytes) -> list[Event]:
        if frame[:1] != VERSION_BYTE:
            self.counters.handshake_failed += 1
            got = frame[0] if frame else "none"
            return self._fail(
                f"peer speaks protocol version {got}",
                reject=f"protocol version {got} not supported, this node speaks {PROTOCOL_VERSION}",
            )
        try:
            msg = unpack(frame[1:])
        except FrameError:
            self.counters.malformed += 1
            return self._fail("handshake frame is not msgpack")
        if type(msg) is not list or not msg or type(msg[0]) is not int:
            self.counters.malformed += 1
            return self._fail("handshake frame is not a tagged array")
        kind = msg[0]
        if kind == REJECT:
            self.counters.handshake_failed += 1
            reason = msg[1] if len(msg) > 1 and isinstance(msg[1], str) else "no reason"
            return self._fail(f"peer refused the connection: {reason[:200]}")
        try:
            if self._dialing is None and kind == HELLO and self._pending_proof is None:
                return self._on_hello(msg)
            if self._dialing is not None and kind == CHALLENGE:
                return self._on_challenge(msg)
            if self._pending_proof is not None and kind == PROOF:
                if len(msg) != 2 or type(msg[1]) is not bytes:
                    raise FrameError("PROOF must be [PROOF, signature]")
                return self._pending_proof(msg[1])
        except FrameError as e:
            self.counters.malformed += 1
            return self._fail(f"bad handshake frame: {e}")
        self.counters.handshake_failed += 1
        return self._fail(f"unexpected handshake frame kind {kind}")

    def _on_hello(self, msg: list[Any]) -> list[Event]:
        if len(msg) != 5:
            raise FrameError("HELLO must have 5 fields")
        _, client_id, server_id, nonce_c, eph_c = msg
        if type(client_id) is not int or type(server_id) is not int:
            raise FrameError("node ids must be integers")
        if (
            type(nonce_c) is not bytes
            or len(nonce_c) != NONCE_LEN
            or type(eph_c) is not bytes
            or len(eph_c) != 32
        ):
            raise FrameError("HELLO needs a 16-byte nonce and a 32-byte ephemeral key")
        own_id = self._directory.own.node_id
        if server_id != own_id:
            self.counters.handshake_failed += 1
            return self._fail(
                f"peer dialed node {server_id}, this is node {own_id}",
                reject=f"this is node {own_id}, not node {server_id}",
            )
        client = self._directory.peers.get(client_id)
        if client is None:
            self.counters.unknown_sender += 1
            return self._fail(f"node {client_id} is not in the directory", reject=f"unknown node {client_id}")
        try:
            shared = self._ephemeral.exchange(x25519.X25519PublicKey.from_public_bytes(eph_c))
        except ValueError:
            self.counters.handshake_failed += 1
            return self._fail("peer sent an invalid ephemeral key", reject="invalid ephemeral key")
        transcript = pack([client_id, server_id, nonce_c, self._nonce, eph_c, self._ephemeral_public])
        signature = self._own_key.sign(_SERVER_SIG + transcript)
        c2s, s2c = _session_keys(shared, transcript)

        def on_proof(client_signature: bytes) -> list[Event]:
            self._pending_proof = None
            if not client.identity_public_key.verify(client_signature, _CLIENT_SIG + transcript):
                self.counters.handshake_failed += 1
                return self._fail(
                    f"node {client_id} failed to prove its identity key",
                    reject="identity proof does not verify against the directory",
                )
            self._open(client, send_key=s2c, recv_key=c2s)
            return [Opened(client)]

        self._pending_proof = on_proof
        challenge = [CHALLENGE, own_id, self._nonce, self._ephemeral_public, signature]
        return [Outgoing(VERSION_BYTE + pack(challenge))]

    def _on_challenge(self, msg: list[Any]) -> list[Event]:
        assert self._dialing is not None
        if len(msg) != 5:
            raise FrameError("CHALLENGE must have 5 fields")
        _, server_id, nonce_s, eph_s, signature = msg
        if (
            type(nonce_s) is not bytes
            or len(nonce_s) != NONCE_LEN
            or type(eph_s) is not bytes
            or len(eph_s) != 32
        ):
            raise FrameError("CHALLENGE needs a 16-byte nonce and a 32-byte ephemeral key")
        if type(signature) is not bytes:
            raise FrameError("CHALLENGE signature must be bytes")
        server = self._dialing
        if server_id != server.node_id:
            self.counters.handshake_failed += 1
            return self._fail(f"dialed {server.describe()} but node {server_id!r} answered")
        own_id = self._directory.own.node_id
        transcript = pack([own_id, server_id, self._nonce, nonce_s, self._ephemeral_public, eph_s])
        if not server.identity_public_key.verify(signature, _SERVER_SIG + transcript):
            self.counters.handshake_failed += 1
            return self._fail(
                f"{server.describe()} failed to prove its identity key",
                reject="identity proof does not verify against the directory",
            )
        try:
            shared = self._ephemeral.exchange(x25519.X25519PublicKey.from_public_bytes(eph_s))
        except ValueError:
            self.counters.handshake_failed += 1
            return self._fail("peer sent an invalid ephemeral key", reject="invalid ephemeral key")
        c2s, s2c = _session_keys(shared, transcript)
        proof = VERSION_BYTE + pack([PROOF, self._own_key.sign(_CLIENT_SIG + transcript)])
        self._open(server, send_key=c2s, recv_key=s2c)
        return [Outgoing(proof), Opened(server)]

    def _open(self, peer: DirectoryEntry, *, send_key: bytes, recv_key: bytes) -> None:
        self.peer = peer
        self._send_aead = AESGCM(send_key)
        self._recv_aead = AESGCM(recv_key)
        self.state = SessionState.OPEN

    def _receive_data(self, frame: bytes) -> list[Event]:
        if len(frame) < 1 + MAC_LEN + 1:
            self.counters.malformed += 1
            return self._fail("data frame too short")
        assert self._recv_aead is not None
        try:
            body = self._recv_aead.decrypt(self._recv_seq.to_bytes(12, "big"), frame[1:], frame[:1])
        except InvalidTag:
            self.counters.bad_mac += 1
            return self._fail("frame failed its authentication tag: the stream was altered")
        self._recv_seq += 1
        try:
            items = unpack(body)
        except FrameError:
            self.counters.malformed += 1
            return []
        if type(items) is not list:
            self.counters.malformed += 1
            return []
        events: list[Event] = []
        runs: list[DirectRun] = []
        for item in items:
            if type(item) is not list or not item:
                self.counters.malformed += 1
                continue
            kind = item[0]
            try:
                if kind == DIRECT_RUN:
                    run = parse_direct_run(item)
                    events.append(run)
                    runs.append(run)
                elif kind == DIRECT:
                    events.append(parse_direct(item))
                elif kind == GOSSIP_BATCH:
                    ttl, batch = parse_gossip_batch(item)
                    events.append(GossipArrived(ttl, batch))
                elif kind == GOSSIP:
                    ttl, batch = parse_gossip(item)
                    events.append(GossipArrived(ttl, batch))
                elif kind == PING:
                    pass  # a beacon: receiving it was the point
                else:
                    self.counters.malformed += 1
            except BatchTooLarge:
                self.counters.oversized += 1
            except FrameError:
                self.counters.malformed += 1
        if runs:  # each message of a run is charged its share of the frame in the history
            share = len(frame) // (len(events) - len(runs) + sum(len(r.data) for r in runs))
            for run in runs:
                run.size = share
        return events
