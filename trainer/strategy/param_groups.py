"""Optimizer parameter groups: weight decay on the weight matrices and embeddings, none on biases and norm scales.

Decaying a normalisation scale pulls it towards 0, i.e. shrinks the layer's output rather than regularising a
mapping; a bias has no input to regularise either. The rule goes by module, not by parameter name: T5's
`relative_attention_bias` is an embedding table (decayed like the others) although its name says bias.
"""

from __future__ import annotations

from typing import Any

import torch

# torch's own normalisation layers; T5LayerNorm and other RMS/LayerNorm variants are caught by their class name.
_TORCH_NORMS = (
    torch.nn.LayerNorm,
    torch.nn.RMSNorm,
    torch.nn.GroupNorm,
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.modules.instancenorm._InstanceNorm,
)


def is_norm_module(name: str, module: torch.nn.Module) -> bool:
    """A normalisation layer: a torch norm, a class named *Norm* (T5LayerNorm), or a submodule named *norm*
    (T5's `layer_norm` / `final_layer_norm`). Embeddings never count, whatever their name."""
    if isinstance(module, torch.nn.Embedding):
        return False
    local_name = name.rsplit(".", 1)[-1].lower()
    return isinstance(module, _TORCH_NORMS) or "norm" in type(module).__name__.lower() or "norm" in local_name


def no_decay_parameter_names(model: torch.nn.Module) -> set[str]:
    """Qualified names (as model.named_parameters() gives them) of the trainable biases and norm weights."""
    exempt_ids = {
        id(param)
        for module_name, module in model.named_modules()
        for param_name, param in module.named_parameters(recurse=False)
        if param_name == "bias" or is_norm_module(module_name, module)
    }
    return {name for name, param in model.named_parameters() if param.requires_grad and id(param) in exempt_ids}


def weight_decay_groups(model: torch.nn.Module, decay_norm_and_bias: bool) -> list[dict[str, Any]]:
    """The trainable parameters as optimizer groups, each in model order: the decayed ones (the optimizer's
    configured weight_decay), then the biases and norm weights with weight_decay 0 unless `decay_norm_and_bias`.
    An empty group is left out (ZeRO flattens every group it is given)."""
    trainable = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    if decay_norm_and_bias:
        return [{"params": [param for _, param in trainable]}]
    exempt = no_decay_parameter_names(model)
    decayed = [param for name, param in trainable if name not in exempt]
    undecayed = [param for name, param in trainable if name in exempt]
    groups: list[dict[str, Any]] = []
    if decayed:
        groups.append({"params": decayed})
    if undecayed:
        groups.append({"params": undecayed, "weight_decay": 0.0})
    return groups
