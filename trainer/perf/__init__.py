"""Performance arithmetic: FLOPs of T5 training steps from the architecture, MFU against GPU peaks, and the
process memory the benchmarks read from /proc."""
