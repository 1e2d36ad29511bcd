"""controller: the FastAPI app factory, store, enrollment, IPAM, topology and routing, netmap building and push."""
