"""Real-process test infrastructure: a multi-node Ray cluster in network namespaces and the services it uses."""
