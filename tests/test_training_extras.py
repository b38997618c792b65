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


def test_dev_accuracy_is_logged_from_a_slice_of_the_train_split(tiny_models, data_dir, tmp_path, monkeypatch):
    """The dev slice's problems are train problems, and the logged accuracy is the score of what was
    generated for them: generation is replaced by answers right for every other problem (a random
    tiny model would score 0 whatever the logging did)."""
    from mathtune.evaluate.generation import Generation, HFBackend

    train_rows = [json.loads(line) for line in (data_dir / "gsm8k" / "train.jsonl").read_text().splitlines()]
    answers = {row["question"]: row["answer"].rpartition("####")[2].strip() for row in train_rows}
    asked: list[str] = []

    def every_other_right(self, requests, **kwargs):
        questions = [next(q for q in answers if q in request.prompt) for request in requests]  # train questions
        asked.extend(questions)
        return [Generation(f"#### {answers[q]}" if i % 2 == 0 else "#### -1", False, 3)
                for i, q in enumerate(questions)]

    monkeypatch.setattr(HFBackend, "generate", every_other_right)
    cfg = cfg_for(tiny_models["llama"], data_dir, tmp_path / "run", dev_eval_every=2, dev_size=4)
    result = train(cfg, tmp_path / "run", show_progress=False)
    rows = read_jsonl_tolerant(tmp_path / "run" / "dev_log.jsonl")
    assert [row["step"] for row in rows] == [2, 4]
    assert [(row["strict-match"], row["numeric-match"]) for row in rows] == [(0.5, 0.5), (0.5, 0.5)]
    assert len(asked) == 8 and len(set(asked)) == 4  # the same 4 dev problems at each step
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
