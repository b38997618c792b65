"""Every shipped YAML in configs/ loads and validates; the T5 study's files hang together."""

from __future__ import annotations

from pathlib import Path

import pytest

from mathtune.config import DEFAULT_CONFIG_DIR, load_config
from mathtune.methods.registry import build_method

CONFIGS = sorted(DEFAULT_CONFIG_DIR.glob("*.yaml"))
T5_STUDY = ["t5_lora_main", "t5_lora_socratic", "t5_full_main", "t5_full_socratic", "t5base_qlora8_main",
            "t5base_qlora8_socratic", "t5_stacked_stage1", "t5_stacked_lora", "t5_lora_cot_breakdown",
            "t5_lora_cot_no_breakdown", "t5_lora_program"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates_and_builds_its_method(path: Path):
    cfg = load_config(path)
    assert build_method(cfg.method).name == cfg.method.name
    assert Path(cfg.output_dir).name == path.stem  # one run dir per config, named after it


def test_t5_study_is_complete():
    names = {p.stem for p in CONFIGS}
    assert set(T5_STUDY) <= names
    for name in T5_STUDY:
        cfg = load_config(DEFAULT_CONFIG_DIR / f"{name}.yaml")
        assert cfg.model.name == ("t5-base" if name.startswith("t5base") else "t5-small"), name


def test_stacked_stage2_builds_on_the_stage1_config():
    stage1 = load_config(DEFAULT_CONFIG_DIR / "t5_stacked_stage1.yaml")
    stage2 = load_config(DEFAULT_CONFIG_DIR / "t5_stacked_lora.yaml")
    assert stage1.method.name == stage2.method.name == "stacked-lora"
    assert stage1.method.stage1_adapter is None and stage2.method.stage1_adapter == stage1.output_dir
    assert stage1.data.subset != stage2.data.subset  # stage 2 learns from another dataset
