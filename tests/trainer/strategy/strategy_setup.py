"""Shared by the in-process strategy tests and the torchrun rank scripts beside them."""

from trainer.data.formatting import tokenizer_corpus
from trainer.data.registry import load_splits
from trainer.models.factory import build_model_config, build_tokenizer
from trainer.strategy.deepspeed_strategy import DeepSpeedStrategy


def configured_strategy(cfg):
    """A strategy on this rank's process group, configured for the model, as Trainer.fit does before building it;
    with the tokenizer and model config."""
    strategy = DeepSpeedStrategy(cfg)
    strategy.setup_distributed()
    splits = load_splits(cfg.data, cfg.run.seed)
    tokenizer = build_tokenizer(cfg.model, lambda: tokenizer_corpus(splits.train), strategy.broadcast_object)
    model_config = build_model_config(cfg.model, tokenizer)
    strategy.configure(model_config.d_model)
    return strategy, tokenizer, model_config
