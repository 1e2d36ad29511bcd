"""Errors a program sees from the p2p API. Each message is one clear line naming the peer and what
happened. A peer's misbehaviour is never raised: it is dropped and counted (`Node.counters`)."""

from __future__ import annotations


class P2PError(Exception):
    """Base of every error the p2p API raises."""


class UnknownPeer(P2PError, LookupError):
    """The node id is not in the directory (or is this node)."""


class PayloadError(P2PError, ValueError):
    """The data cannot be sent: msgpack cannot encode it, or it is above the size limit."""


class SendTimeout(P2PError, TimeoutError):
    """The peer's send queue stayed full (the peer is down or slower than the sender) past the timeout."""


class RequestTimeout(P2PError, TimeoutError):
    """No reply came within the timeout."""


class RequestFailed(P2PError):
    """The peer answered a request with an error (no handler, refused, or the handler raised)."""


class NodeClosed(P2PError):
    """The node was closed while the call was waiting."""
