"""Full fine-tuning: every parameter trains."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class FullMethodConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Literal["full"] = "full"
