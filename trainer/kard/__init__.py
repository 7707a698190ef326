"""KARD (Kang et al., NeurIPS 2023): knowledge-augmented reasoning distillation.

Rationale ingestion and filtering, the retrieval consumer (one interface over the embedded index, the HTTP
service and Elasticsearch), the knowledge dataset every KARD stage reads, and the one prompt contract.
"""
