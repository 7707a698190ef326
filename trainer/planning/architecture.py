"""The architecture a plan sizes, resolved offline from a preset, a published hub name or a config.json."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from trainer.models.architecture import ArchitectureError, T5Architecture
from trainer.models.presets import OFFLINE_VOCAB_SIZE, PRESETS

# Hub names of the published presets, so a config naming the checkpoint (google/flan-t5-xl) plans offline.
_PRESET_BY_HUB_NAME = {preset.hub_name: name for name, preset in PRESETS.items() if preset.hub_name}


def resolve_architecture(model: str, tokenizer_vocab_size: int | None = None) -> T5Architecture:
    """A preset name, a published checkpoint's hub name, a directory with config.json, or a config.json file.

    Offline presets take the offline tokenizer's size (`tokenizer_vocab_size`, default 4000).
    """
    preset = PRESETS.get(model) or PRESETS.get(_PRESET_BY_HUB_NAME.get(model, ""))
    if preset is not None:
        return dataclasses.replace(preset.architecture_for(tokenizer_vocab_size or OFFLINE_VOCAB_SIZE), name=model)
    path = Path(model).expanduser()
    config_file = path / "config.json" if path.is_dir() else path
    if config_file.is_file():
        try:
            return T5Architecture.from_hf_config(json.loads(config_file.read_text()), name=model)
        except (json.JSONDecodeError, TypeError, KeyError) as exc:
            raise ArchitectureError(f"{config_file}: not a readable T5 config.json ({exc})") from None
    raise ArchitectureError(
        f"{model!r} is neither a preset ({', '.join(PRESETS)}), a published T5 hub name, nor a path to a "
        "config.json; the planner needs the architecture without downloading anything"
    )
