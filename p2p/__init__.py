"""p2p: signed messaging between nodes over the tunnel addresses (sans-I/O core driven by a websockets
transport). The program-facing API is re-exported here, lazily: `import p2p.directory` (what the agent
does) or `import p2p.core...` does not load the transport or websockets."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> module that defines it
_EXPORTS = {
    "Delivery": "p2p.core.admission",
    "Counters": "p2p.core.counters",
    "DEFAULT_PORT": "p2p.core.directory",
    "Directory": "p2p.core.directory",
    "DirectoryEntry": "p2p.core.directory",
    "ByPriority": "p2p.core.history",
    "History": "p2p.core.history",
    "LeastRecentlyUsed": "p2p.core.history",
    "MaxAge": "p2p.core.history",
    "Message": "p2p.core.message",
    "PRIORITY_DEFAULT": "p2p.core.message",
    "PRIORITY_MAX": "p2p.core.message",
    "PRIORITY_MIN": "p2p.core.message",
    "NodeClosed": "p2p.errors",
    "P2PError": "p2p.errors",
    "PayloadError": "p2p.errors",
    "RequestFailed": "p2p.errors",
    "RequestTimeout": "p2p.errors",
    "SendTimeout": "p2p.errors",
    "UnknownPeer": "p2p.errors",
    "PeerDown": "p2p.events",
    "PeerEvent": "p2p.events",
    "PeerUp": "p2p.events",
    "Refused": "p2p.middleware",
    "authorize_roles": "p2p.middleware",
    "log_messages": "p2p.middleware",
    "rate_limit": "p2p.middleware",
    "Node": "p2p.node",
    "LeaderElection": "p2p.election",
    "ElectionTiming": "p2p.core.election",
    "WorkerPerformance": "p2p.core.performance",
    "WorkerStats": "p2p.core.performance",
    "Replaced": "p2p.core.replacement",
    "ReplacementPolicy": "p2p.core.replacement",
    "WorkerPool": "p2p.core.replacement",
    "NodeConfig": "p2p.config",
}
__all__ = [
    "DEFAULT_PORT",
    "PRIORITY_DEFAULT",
    "PRIORITY_MAX",
    "PRIORITY_MIN",
    "ByPriority",
    "Counters",
    "Delivery",
    "Directory",
    "DirectoryEntry",
    "ElectionTiming",
    "History",
    "LeaderElection",
    "LeastRecentlyUsed",
    "MaxAge",
    "Message",
    "Node",
    "NodeClosed",
    "NodeConfig",
    "P2PError",
    "PayloadError",
    "PeerDown",
    "PeerEvent",
    "PeerUp",
    "Refused",
    "Replaced",
    "ReplacementPolicy",
    "RequestFailed",
    "RequestTimeout",
    "SendTimeout",
    "UnknownPeer",
    "WorkerPerformance",
    "WorkerPool",
    "WorkerStats",
    "authorize_roles",
    "log_messages",
    "rate_limit",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'p2p' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


if TYPE_CHECKING:
    from p2p.config import NodeConfig
    from p2p.core.admission import Delivery
    from p2p.core.counters import Counters
    from p2p.core.directory import DEFAULT_PORT, Directory, DirectoryEntry
    from p2p.core.election import ElectionTiming
    from p2p.core.history import ByPriority, History, LeastRecentlyUsed, MaxAge
    from p2p.core.message import PRIORITY_DEFAULT, PRIORITY_MAX, PRIORITY_MIN, Message
    from p2p.core.performance import WorkerPerformance, WorkerStats
    from p2p.core.replacement import Replaced, ReplacementPolicy, WorkerPool
    from p2p.election import LeaderElection
    from p2p.errors import (
        NodeClosed,
        P2PError,
        PayloadError,
        RequestFailed,
        RequestTimeout,
        SendTimeout,
        UnknownPeer,
    )
    from p2p.events import PeerDown, PeerEvent, PeerUp
    from p2p.middleware import Refused, authorize_roles, log_messages, rate_limit
    from p2p.node import Node
