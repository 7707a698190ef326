"""Typed configuration for training runs: sections (trainer.config.schema), loading (trainer.config.loader).

Nothing is re-exported here: a method package imports trainer.config.sections without pulling in the schema.
"""
