"""Performance arithmetic: FLOPs of T5 training steps from the architecture, and MFU against GPU peaks."""
