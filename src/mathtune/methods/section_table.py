"""Every method's config section, by name; `method.name` in YAML picks one (pydantic discriminator).

The config side of `methods/registry.py`'s table (each method's `config_class`), kept apart so that
config.py validates a run without importing torch or PEFT; `register_method` extends both.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce
from operator import or_
from typing import Any

from mathtune.methods.full.config import FullMethodConfig
from mathtune.methods.grpo.config import GrpoMethodConfig
from mathtune.methods.lora.config import LoraMethodConfig
from mathtune.methods.qlora.config import QloraMethodConfig
from mathtune.methods.stacked_lora.config import StackedLoraMethodConfig

# Order matters only for the default: the first entry is what an empty config gets.
METHOD_CONFIGS: dict[str, type] = {
    "lora": LoraMethodConfig, "full": FullMethodConfig, "qlora": QloraMethodConfig,
    "stacked-lora": StackedLoraMethodConfig, "grpo": GrpoMethodConfig,
}


# Called after a method is added, so the config's `method` field accepts it (config.py adds its
# rebuild here: config.py imports methods/, never the other way round).
ON_NEW_METHOD: list[Callable[[], None]] = []


def add_method_config(name: str, config_class: type) -> None:
    METHOD_CONFIGS[name] = config_class
    for listener in ON_NEW_METHOD:
        listener()


def method_union() -> Any:
    """`LoraMethodConfig | FullMethodConfig | ...` of every registered method."""
    return reduce(or_, METHOD_CONFIGS.values())


MethodConfig = method_union()
