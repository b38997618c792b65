"""GRPO trains a PEFT LoRA adapter, so its weights save and load exactly as `lora`'s: `mathtune eval`
and `compare` work on a GRPO run unchanged. The training itself is TRL's (recipes/rl.py)."""

from __future__ import annotations

from pathlib import Path

from mathtune.errors import MathtuneError
from mathtune.methods.grpo.config import GrpoMethodConfig
from mathtune.methods.lora.method import LoraMethod


class GrpoMethod(LoraMethod):
    name = "grpo"
    config_class = GrpoMethodConfig
    loop = "mathtune.recipes.rl:train_grpo"  # TRL's GRPOTrainer
    shares_base = False  # shared-base evaluation stays LoRA/QLoRA runs, as before

    def __init__(self, cfg: GrpoMethodConfig) -> None:
        super().__init__(cfg)  # a GrpoMethodConfig is a LoraMethodConfig: the adapter's shape
        self.grpo = cfg

    def check(self, model_name: str | None = None) -> None:
        """Before any output is touched: the SFT adapter to continue must exist, for this base model."""
        if self.grpo.init_adapter is not None:
            adapter = init_adapter_dir(self.grpo.init_adapter)
            if model_name is not None:
                check_same_base(adapter, model_name)

    def starts_from(self) -> Path | None:
        return None if self.grpo.init_adapter is None else init_adapter_dir(self.grpo.init_adapter)


def init_adapter_dir(path: str | Path) -> Path:
    """A lora run dir (holding adapter/) or the adapter dir itself."""
    path = Path(path).expanduser()
    for candidate in (path / "adapter", path):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise MathtuneError(f"grpo: init_adapter {path} holds no LoRA adapter (adapter_config.json); "
                        "point it at a finished `mathtune train` run with method lora")


def check_same_base(init_dir: Path, model_name: str) -> None:
    """An adapter trained on another base model cannot continue here: its run's config says which."""
    import yaml

    run_config = init_dir.parent / "config.yaml" if init_dir.name == "adapter" else init_dir / "config.yaml"
    if not run_config.is_file():
        return  # a bare adapter dir: PEFT's shape check at load time is the remaining guard
    trained_on = (yaml.safe_load(run_config.read_text(encoding="utf-8")) or {}).get("model", {}).get("name")
    if trained_on is not None and trained_on != model_name:
        raise MathtuneError(f"grpo: init_adapter {init_dir} was trained on model '{trained_on}', "
                            f"this run's model is '{model_name}'; use the same base model")

