"""The union of every method's config; `method.name` in YAML picks one (pydantic discriminator)."""

from __future__ import annotations

from mathtune.methods.full.config import FullMethodConfig
from mathtune.methods.grpo.config import GrpoMethodConfig
from mathtune.methods.lora.config import LoraMethodConfig
from mathtune.methods.qlora.config import QloraMethodConfig
from mathtune.methods.stacked_lora.config import StackedLoraMethodConfig

# Order matters only for the default: the first entry is what an empty config gets.
MethodConfig = LoraMethodConfig | FullMethodConfig | QloraMethodConfig | StackedLoraMethodConfig | GrpoMethodConfig
