from pathlib import Path

import pytest

from mathtune.config import build_config, load_config, parse_override
from mathtune.errors import MathtuneError


def test_defaults_validate_and_method_defaults_to_lora():
    cfg = build_config({"method": {"r": 4}})
    assert cfg.method.name == "lora" and cfg.method.r == 4 and cfg.method.alpha == 16.0


@pytest.mark.parametrize(
    ("tree", "needle"),
    [
        ({"trian": {}}, "unknown config key 'trian'"),
        ({"train": {"lr": "fast"}}, "'train.lr'"),
        ({"train": {"batch_size": "8"}}, "'train.batch_size'"),
        ({"data": {"train_size": -5}}, "'data.train_size'"),
        ({"method": {"name": "bogus"}}, "unknown method 'bogus'"),
        ({"method": {"name": "full", "r": 8}}, "unknown config key 'method.r'"),
        ({"prompt": {"strategy": "breakdown"}}, "socratic"),
    ],
)
def test_bad_config_names_the_key(tree, needle):
    with pytest.raises(MathtuneError, match=None) as info:
        build_config(tree)
    assert needle in str(info.value)


def test_overrides_are_typed_yaml():
    assert parse_override("train.lr=1e-4") == ("train.lr", 1e-4)
    assert parse_override('eval.stop=["\\nQ:"]')[1] == ["\nQ:"]
    cfg = build_config({}, {"train.max_steps": 3, "model.name": "x"})
    assert cfg.train.max_steps == 3 and cfg.model.name == "x"


def test_override_without_equals_is_an_error():
    with pytest.raises(MathtuneError, match="key.sub=value"):
        parse_override("train.lr")


def test_yaml_errors(tmp_path: Path):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "bad.yaml").write_text("train: {lr: [\n")
    with pytest.raises(MathtuneError, match="mapping"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(MathtuneError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(MathtuneError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_an_override_can_set_null():
    """`-s data.train_size=null` on a config that sets 600 means all rows, not 'leave it at 600'."""
    cfg = build_config({"data": {"train_size": 600}, "eval": {"num_problems": 200}},
                       dict([parse_override("data.train_size=null"), parse_override("eval.num_problems=null")]))
    assert cfg.data.train_size is None and cfg.eval.num_problems is None
