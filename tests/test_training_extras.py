"""Dev-slice accuracy during training, and several adapters evaluated over one loaded base."""

import json

from mathtune.config import build_config
from mathtune.io import read_jsonl_tolerant
from mathtune.recipes.evaluate import eval_adapters_workflow, eval_workflow
from mathtune.recipes.train import train


def cfg_for(model_dir, data_dir, out, **train):
    return build_config({
        "model": {"name": str(model_dir)}, "data": {"data_dir": str(data_dir), "train_size": 16},
        "train": {"max_steps": 4, "precision": "fp32", "lr": 5e-3, "log_every": 1, **train},
        "method": {"dropout": 0.0}, "eval": {"num_problems": 4, "max_new_tokens": 8, "batch_size": 4},
        "output_dir": str(out),
    })


def test_dev_accuracy_is_logged_from_a_slice_of_the_train_split(tiny_models, data_dir, tmp_path):
    cfg = cfg_for(tiny_models["llama"], data_dir, tmp_path / "run", dev_eval_every=2, dev_size=4)
    result = train(cfg, tmp_path / "run", show_progress=False)
    rows = read_jsonl_tolerant(tmp_path / "run" / "dev_log.jsonl")
    assert [row["step"] for row in rows] == [2, 4]
    assert all(0.0 <= row["strict-match"] <= 1.0 for row in rows)
    assert result.card["data"]["rows"] == 12  # 16 sampled rows minus the 4-problem dev slice


def test_adapters_share_one_base_and_match_separate_evaluation(tiny_models, data_dir, tmp_path):
    runs = []
    for index, lr in enumerate((5e-3, 5e-2)):
        cfg = cfg_for(tiny_models["llama"], data_dir, tmp_path / f"run{index}", lr=lr, seed=index)
        train(cfg, tmp_path / f"run{index}", show_progress=False)
        runs.append(tmp_path / f"run{index}")
    eval_cfg = cfg_for(tiny_models["llama"], data_dir, tmp_path / "x")
    shared = eval_adapters_workflow(eval_cfg, runs)
    assert [out for _, out in shared] == [run / "eval" / "tuned" for run in runs]
    shared_outputs = [[json.loads(line)["output"] for line in (run / "eval" / "tuned" / "predictions.jsonl")
                       .read_text().splitlines()] for run in runs]
    for run, outputs in zip(runs, shared_outputs, strict=True):
        alone = eval_workflow(eval_cfg, run, False, tmp_path / f"alone-{run.name}")
        assert alone["n"] == 4
        alone_outputs = [json.loads(line)["output"] for line in
                         (tmp_path / f"alone-{run.name}" / "predictions.jsonl").read_text().splitlines()]
        assert alone_outputs == outputs
    assert shared_outputs[0] != shared_outputs[1]  # the switch really changed the adapter
