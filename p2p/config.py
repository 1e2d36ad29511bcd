"""`NodeConfig`: every knob of a p2p node, with defaults for a real mesh (tests shorten the timers)."""

from __future__ import annotations

from dataclasses import dataclass

from p2p.core.codec import COMPRESSION_THRESHOLD


@dataclass(frozen=True)
class NodeConfig:
    host: str | None = None  # listen address; None: the directory's own address
    port: int | None = None  # listen port; None: the directory's own port; 0: any free port
    listen: bool = True
    max_message_bytes: int = 4 * 1024 * 1024  # encoded payload, before compression
    compression_threshold: int = COMPRESSION_THRESHOLD
    send_queue_items: int = 4096
    send_queue_bytes: int = 32 * 1024 * 1024
    inbound_queue_items: int = 4096
    inbound_queue_bytes: int = 32 * 1024 * 1024
    batch_items: int = 256  # at most this many messages per frame when there is a backlog
    batch_bytes: int = 256 * 1024
    send_timeout: float = 10.0  # how long send() waits for room in a full queue
    handshake_timeout: float = 5.0
    heartbeat_interval: float = 1.0
    dead_after: float = 3.5  # seconds of silence before a peer is declared dead
    backoff_initial: float = 0.1
    backoff_max: float = 10.0
    replay_window: float = 60.0
    replay_per_origin: int = 32_768
    gossip_ttl: int = 4  # hops a broadcast may travel
    handlers_per_peer: int = 1  # concurrent handler calls per peer; 1 keeps a peer's order
    directory_poll_interval: float = 1.0
    max_pending_handshakes: int = 64  # unfinished inbound handshakes, all sources together
    max_handshakes_per_source: int = 4  # ... from one remote address (p2p/core/gate.py)
    ws_max_queue: int = 8  # frames websockets buffers per connection before it stops reading
    verify_threads: int = 0  # threads verifying relayed messages' signatures; 0: one per core
    # answers to idempotent requests kept to answer their retries (p2p/core/replies.py)
    reply_cache_items: int = 4096
    reply_cache_bytes: int = 16 * 1024 * 1024
    reply_cache_seconds: float = 300.0

    @property
    def max_frame_bytes(self) -> int:
        return self.max_message_bytes + 64 * 1024
