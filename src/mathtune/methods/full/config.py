"""Full fine-tuning: every parameter trains."""

from __future__ import annotations

from typing import Literal

from mathtune.methods.section import MethodSection


class FullMethodConfig(MethodSection):
    name: Literal["full"] = "full"
