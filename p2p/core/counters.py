"""Counters of what a node dropped or refused, and why. A program reads them; nothing is ever raised
to it for a peer's misbehaviour.

Every drop in the p2p layer increments exactly one of these fields; `dead_peer` counts closed connections
and `repeated_request` retried requests answered from the reply cache (neither is a dropped message).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class Counters:
    # connection set-up
    handshake_failed: int = 0  # bad signature, wrong node, version mismatch, timeout
    refused_busy_source: int = 0  # inbound refused: its address already had its unfinished handshakes
    refused_all_slots: int = 0  # inbound refused: every handshake slot held by sources as busy as it
    displaced_handshake: int = 0  # an unfinished inbound handshake closed to let a less busy source in
    unknown_sender: int = 0  # a node id (or gossip origin) that is not in the directory
    # frames
    oversized: int = 0  # a frame or payload above the size limits
    malformed: int = 0  # frames or items that do not decode
    bad_mac: int = 0  # a frame failing the session MAC: the stream was tampered with; connection closed
    # messages
    bad_signature: int = 0  # a relayed message whose origin signature does not verify
    duplicate: int = 0  # a message id already in the history (relays send copies; expected)
    replayed: int = 0  # a relayed message id seen before but no longer in history, or older than the floor
    stale: int = 0  # a relayed message timestamp outside the replay window
    unexpected_reply: int = 0  # a reply to no pending request (late after a timeout, or forged)
    repeated_request: int = (
        0  # a retried idempotent request: answered again (or still running), not run again
    )
    # delivery
    no_handler: int = 0
    unauthorized: int = 0  # refused by an authorization middleware
    rate_limited: int = 0  # refused by a rate-limit middleware
    handler_error: int = 0  # a handler raised
    # sending
    relay_dropped: int = 0  # a message to relay found the next hop's send queue full
    lost_in_flight: int = 0  # messages in a frame whose connection closed while it was written
    reply_dropped: int = 0  # the kept answer to a retried request found the send queue full
    dead_peer: int = 0  # connections closed because heartbeats stopped

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
