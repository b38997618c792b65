"""A run's recorded eval settings are the default wherever its model is used (eval, sample, lm-eval,
the app); `-c` and `-s eval.*` still win, and the settings used are printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mathtune.cli import build_run_config


def _record_eval(run: Path, **settings) -> None:
    """Give a run's config.yaml eval settings other than quickstart's (as `make run` records)."""
    tree = yaml.safe_load((run / "config.yaml").read_text())
    tree["eval"].update(settings)
    (run / "config.yaml").write_text(yaml.safe_dump(tree))


def _generation(metrics_path: Path) -> dict:
    metrics = json.loads(metrics_path.read_text())
    return next(v["generation"] for v in metrics.values() if isinstance(v, dict) and "generation" in v)


def test_eval_of_a_run_uses_its_recorded_settings(run_cli, finished_run, tmp_path):
    _record_eval(finished_run, calculator=True, max_new_tokens=8, num_problems=3, batch_size=2, perplexity=False)
    result = run_cli("eval", str(finished_run))
    assert result.code == 0, result.stderr
    assert f"eval settings from {finished_run / 'config.yaml'}: calculator on, max_new_tokens 8" in result.stdout
    generation = _generation(finished_run / "eval" / "tuned" / "metrics.json")
    assert generation["calculator"] is True and generation["max_new_tokens"] == 8
    assert json.loads((finished_run / "eval" / "tuned" / "metrics.json").read_text())["n"] == 3

    # -s still wins, and is shown
    out = tmp_path / "no-calculator"
    result = run_cli("eval", str(finished_run), "-s", "eval.calculator=false", "-o", str(out))
    assert result.code == 0, result.stderr
    assert "calculator off" in result.stdout and "set here: eval.calculator=false" in result.stdout
    assert _generation(out / "metrics.json")["calculator"] is False


def test_another_benchmark_keeps_the_runs_decoding(finished_run):
    _record_eval(finished_run, calculator=True, batch_size=64)
    cfg = build_run_config(None, ["data.dataset=svamp"], [finished_run])
    assert cfg.eval.calculator is True and cfg.eval.batch_size == 64 and cfg.data.dataset == "svamp"


def test_a_config_file_wins_over_the_run(finished_run, tmp_path):
    _record_eval(finished_run, calculator=True)
    config = tmp_path / "c.yaml"
    config.write_text("eval: {calculator: false, batch_size: 3}\n")
    cfg = build_run_config(config, [], [finished_run])
    assert cfg.eval.calculator is False and cfg.eval.batch_size == 3


def test_sample_and_lm_eval_resolve_the_same_way(finished_run):
    """`sample` and `lm-eval` build their config with the same call: the run's settings, then -s."""
    _record_eval(finished_run, calculator=True, max_new_tokens=77, seed=9)
    cfg = build_run_config(None, ["eval.samples=4"], [finished_run])
    assert (cfg.eval.calculator, cfg.eval.max_new_tokens, cfg.eval.seed, cfg.eval.samples) == (True, 77, 9, 4)


def test_runs_with_different_settings_are_not_evaluated_together(run_cli, finished_run, tmp_path):
    import shutil

    other = Path(shutil.copytree(finished_run, tmp_path / "other"))
    _record_eval(other, calculator=True)
    result = run_cli("eval", str(finished_run), str(other))
    assert result.code == 2 and "eval.calculator" in result.stderr and "-c CONFIG" in result.stderr


@pytest.mark.parametrize(("make", "says"), [
    (lambda tmp: tmp / "nope", "does not exist"),
    (lambda tmp: tmp, "has no config.yaml"),
])
def test_a_path_that_is_no_run_is_named_so(run_cli, tmp_path, make, says):
    result = run_cli("eval", str(make(tmp_path)))
    assert result.code == 2 and says in result.stderr and "config file not found" not in result.stderr


def test_an_interrupted_run_points_at_its_checkpoint(run_cli, finished_run):
    import shutil

    shutil.rmtree(finished_run / "adapter")
    (finished_run / "train_card.json").unlink()
    (finished_run / "checkpoints" / "step-0000002").mkdir(parents=True)
    result = run_cli("eval", str(finished_run))
    assert result.code == 2
    assert "interrupted (checkpoint at step 2)" in result.stderr and "--resume" in result.stderr
