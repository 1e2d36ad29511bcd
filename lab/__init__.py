"""lab: a real mesh of N hosts in network namespaces on one machine; also the harness of the root test tiers."""
