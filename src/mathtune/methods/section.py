"""The base of every method's config section (`method:` in YAML), light enough for config.py to import."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class MethodSection(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str

    def check_against(self, run: Any) -> None:
        """Checks of this method's settings against the rest of the run config (`run`, a RunConfig):
        raise ValueError naming the keys. Most methods have none; GRPO's rewards depend on the prompt."""
        return None
