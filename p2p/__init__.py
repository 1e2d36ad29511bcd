"""p2p: signed messaging between nodes over the tunnel addresses (sans-I/O core driven by a websockets transport)."""
