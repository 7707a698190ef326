"""Benchmarks behind `make bench` that train models (the retrieval one lives in retrieval_service)."""
