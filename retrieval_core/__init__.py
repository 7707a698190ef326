"""What the trainer and the retrieval service share: passages, the tokenization contract, BM25 backends whose
scores all follow Lucene's convention, and the late-interaction scorer that reranks at inference.

It imports nothing from `trainer` or `retrieval_service` (tests/retrieval_core/test_import_boundary.py), so the
slim retrieval image carries it without the trainer.
"""
