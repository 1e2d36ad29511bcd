"""p2p.core: the sans-I/O protocol of the p2p layer.

Bytes and events in, bytes and events out; time is always an input (`now`) and randomness is passed in
(nonces, ephemeral keys, jitter), never read here. Nothing in this package imports asyncio, sockets or
websockets; the transport in `p2p.node` drives it.
"""
