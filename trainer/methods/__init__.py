"""Training methods, one package each; importing this package registers the built-in ones
(trainer.methods.registry) in the order comparisons list them: baselines, KNIFE, then KARD."""

# isort: skip_file
from trainer.methods import finetune, multitask, knife, kard

__all__ = ["finetune", "multitask", "knife", "kard"]
