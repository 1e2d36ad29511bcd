"""agent: the per-host daemon: controller client, reconcile, WireGuard backends, host networking, probes, state cache."""
