"""Our evaluator and lm-eval-harness agree: same prompts, same outputs, same extracted answers, same scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mathtune.config import build_config
from mathtune.evaluate.lm_eval_bridge import (
    TASK_FILES,
    hf_model_args,
    lm_eval_record,
    run_lm_eval,
    shipped_task,
    task_config,
)

lm_eval = pytest.importorskip("lm_eval")
LM_EVAL_GSM8K = Path(lm_eval.__file__).parent / "tasks" / "gsm8k"
ORIGINALS = {"gsm8k": "gsm8k.yaml", "gsm8k_cot": "gsm8k-cot.yaml"}
DATASET_KEYS = {"dataset_path", "dataset_name", "dataset_kwargs"}


@pytest.mark.parametrize("name", sorted(TASK_FILES))
def test_shipped_tasks_equal_lm_evals_own_but_for_the_dataset(name):
    original = yaml.safe_load((LM_EVAL_GSM8K / ORIGINALS[name]).read_text())
    ours = shipped_task(name)
    assert {k: v for k, v in ours.items() if k not in DATASET_KEYS} == {
        k: v for k, v in original.items() if k not in DATASET_KEYS}
    assert ours["dataset_path"] == "json"


def test_task_config_points_at_local_files_or_the_hub(data_dir, tmp_path):
    local = task_config("gsm8k", data_dir)
    assert local["dataset_kwargs"]["data_files"]["test"].endswith("gsm8k/test.jsonl")
    assert Path(local["dataset_kwargs"]["data_files"]["train"]).is_file()
    hub = task_config("gsm8k", None)
    assert (hub["dataset_path"], hub["dataset_name"]) == ("openai/gsm8k", "main")
    assert "dataset_kwargs" not in hub
    with pytest.raises(Exception, match="missing"):
        task_config("gsm8k", tmp_path)


@pytest.mark.parametrize(("task", "strategy", "shots"), [("gsm8k", "lm-eval-gsm8k", 5),
                                                         ("gsm8k_cot", "lm-eval-gsm8k-cot", 2)])
def test_our_evaluator_reproduces_lm_eval_per_problem(tiny_models, data_dir, tmp_path, task, strategy, shots):
    """8 problems, shots as lm-eval takes them (gsm8k: drawn per problem; gsm8k_cot: its fixed ones,
    the first 2 here so the tiny model's 512 positions hold them), greedy fp32: identical prompts,
    answers and scores."""
    from mathtune.evaluate.backend import build_backend
    from mathtune.recipes.evaluate import evaluate

    cfg = build_config({
        "model": {"name": str(tiny_models["llama"])},
        "data": {"data_dir": str(data_dir)},
        "prompt": {"strategy": strategy, "few_shot": shots},
        "eval": {"num_problems": 8, "seed": 1234, "batch_size": 3, "max_new_tokens": 24, "dtype": "fp32",
                 "perplexity": False},
    })
    backend, meta = build_backend(cfg)
    ours = evaluate(cfg, backend, tmp_path / "ours", "base", backend.tokenizer, meta, show_progress=False)
    ids = ours["reproducibility"]["problems"]["ids"]

    args = hf_model_args(str(tiny_models["llama"]), None, "float32", "cpu")
    record = lm_eval_record(run_lm_eval([task], args, data_dir=data_dir, samples=sorted(int(i) for i in ids),
                                        max_gen_toks=24, batch_size=2, num_fewshot=shots))
    theirs = {str(s["doc_id"]): s for s in record["summary"][task]["samples"]}
    rows = {r["id"]: r for r in _read_rows(tmp_path / "ours" / "predictions.jsonl")}

    assert sorted(theirs) == sorted(ids)
    for problem_id in ids:
        assert rows[problem_id]["prompt"] == theirs[problem_id]["prompt"]
        assert rows[problem_id]["output"] == theirs[problem_id]["output"]
        for name in ("strict-match", "flexible-extract"):
            assert rows[problem_id]["extracted"][name] == theirs[problem_id]["extracted"][name]
            assert rows[problem_id]["correct"][name] == theirs[problem_id]["correct"][name]
    for name in ("strict-match", "flexible-extract"):
        assert ours["scores"][name]["exact_match"] == record["summary"][task]["scores"][name]["exact_match"]


SOLUTION = "She sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18"
CRAFTED = [  # outputs a model writes, right and wrong under each score, tricky formats included
    "9 * 2 = 18\n#### 18", "#### 18.", "#### $18", "#### 1,8", "She makes 18 dollars.\n#### 19",
    "#### 18 eggs and 2 boxes", "The answer is 18.", "The answer is $18.", "The answer is 17. #### 18",
    "So 9 * 2 = 18 dollars", "no number at all", "#### -18", "It is 18.00", "The answer is 18.0.",
    "#### 18\n#### 20", "costs $18.", "2 + 16 = 18, then 20", "9 * 2 = 18. The answer is 18.\n\nQuestion:",
    "The answer is 1,8. Done",
]


@pytest.mark.parametrize(("task", "strategy"), [("gsm8k", "lm-eval-gsm8k"), ("gsm8k_cot", "lm-eval-gsm8k-cot")])
def test_our_scores_equal_lm_evals_filters_and_metric_on_crafted_outputs(task, strategy):
    """lm-eval's own filters and exact_match, built from the shipped task's filter_list and metric
    settings, against ours on outputs of known answers: per output and per score, with scores that
    are neither all right nor all wrong (a tiny random model's outputs score 0 under both)."""
    from jinja2 import Template
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    from mathtune.evaluate.extraction import score_answer
    from mathtune.prompts import get_strategy

    config = shipped_task(task)
    reference = Template(config["doc_to_target"]).render(answer=SOLUTION)
    metric = {k: v for k, v in config["metric_list"][0].items() if k not in ("metric", "aggregation",
                                                                             "higher_is_better")}
    for entry in config["filter_list"]:
        regex = entry["filter"][0]
        assert [f["function"] for f in entry["filter"]] == ["regex", "take_first"]
        lm_filter = RegexFilter(regex_pattern=regex["regex_pattern"], group_select=regex.get("group_select", 0))
        theirs = []
        for output in CRAFTED:
            extracted = lm_filter.apply([[output]], [{}])[0][0]
            right = exact_match_hf_evaluate([extracted], [reference], **metric)["exact_match"] == 1.0
            theirs.append((extracted, right))
        ours = []
        for output in CRAFTED:
            extracted, correct = score_answer(output, SOLUTION, "18", "number", get_strategy(strategy).task)
            ours.append((extracted[entry["name"]], correct[entry["name"]]))
        assert ours == theirs, entry["name"]
        assert 2 <= sum(right for _, right in ours) <= len(CRAFTED) - 2, entry["name"]


def _read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]



def test_lm_eval_command_writes_json_and_run_card(tiny_models, data_dir, tmp_path):
    from typer.testing import CliRunner

    from mathtune.cli import app

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run_card.json").write_text(json.dumps({"kind": "run", "base": {"n": 2}}))
    result = CliRunner().invoke(app, [
        "lm-eval", str(run_dir), "--base", "--model", str(tiny_models["llama"]), "--data-dir", str(data_dir),
        "--limit", "2", "-s", "eval.max_new_tokens=8", "-s", "eval.dtype=fp32", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "lm-eval gsm8k: n=2" in result.output
    record = json.loads((tmp_path / "out" / "lm_eval.json").read_text())
    assert record["mathtune"]["problems"] == "first_n"
    assert record["tasks"]["gsm8k"]["dataset_kwargs"]["data_files"]["test"].endswith("test.jsonl")
    card = json.loads((run_dir / "run_card.json").read_text())
    assert card["base"] == {"n": 2} and card["lm_eval"]["base"]["gsm8k"]["n"] == 2
