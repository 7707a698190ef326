"""What only the tests use: a multi-node Ray cluster in network namespaces, the services it uses, failpoint arming,
and the retrieval tests' corpus. On pytest's path (pyproject `pythonpath`); no product module imports it."""
