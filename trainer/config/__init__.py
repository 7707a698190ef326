"""Typed configuration for training runs."""

from trainer.config.loader import ConfigError, flatten, load_config
from trainer.config.schema import ExperimentConfig

__all__ = ["ConfigError", "ExperimentConfig", "flatten", "load_config"]
