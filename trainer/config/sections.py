"""The base classes every config section derives from, kept apart from the full schema so that a method's
package can declare its own section without importing (or being imported by) trainer.config.schema."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base for every config section: typos in YAML keys must fail loudly, not be ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MethodSection(Section):
    """The `method` section: `name` picks a registered method (trainer.methods.registry), whose own subclass of
    this section is the only shape accepted for it, so another method's knobs are an unknown key, not ignored."""

    name: str
