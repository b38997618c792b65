"""`mathtune improve` end to end on the tiny random Llama: one round of sample -> filter -> train. A random
model is never right, so the sampler is scripted: per problem one right solution, one repeat of it,
one repeat of the human solution and one wrong one."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from mathtune.config import build_config
from mathtune.data.programs import solution_to_program
from mathtune.evaluate.generation import Generation, HFBackend
from mathtune.recipes.improve import improve_workflow
from mathtune.recipes.train import train_workflow


def _solutions(data_dir) -> dict[str, str]:
    rows = [json.loads(line) for line in (data_dir / "gsm8k" / "train.jsonl").read_text().splitlines()]
    return {row["question"]: row["answer"] for row in rows}


@pytest.fixture
def scripted_sampler(monkeypatch, data_dir):
    solutions, calls = _solutions(data_dir), []

    def sample(self, requests, keys, k, *, temperature=1.0, top_p=1.0, seed=0, share_prefix=True, first=0):
        calls.append((list(keys), k, seed))
        drawn = []
        for request in requests:
            question = request.prompt.split("Q: ", 1)[1].split("\n", 1)[0]
            human = solutions[question]
            answer = human.rsplit("#### ", 1)[1]
            if "Write a Python program" in request.prompt:  # the program strategy: code, closed by the stop
                script = [f"total = {answer}\nanswer = total\n", f"total  =  {answer}\nanswer = total",
                          solution_to_program(human), "answer = 123456\n"]
            else:
                script = [f" My way: the result is {answer}.\n#### {answer}", f" my way:  the result is "
                          f"{answer}.\n#### {answer}", f" {human}", " I guess.\n#### 123456"]
            drawn.append([Generation(script[j % 4], False, 9) for j in range(first, k)])
        return drawn

    monkeypatch.setattr(HFBackend, "sample", sample)
    return calls


def test_one_round_keeps_the_verified_samples_and_trains_the_next_model(tiny_models, data_dir, tmp_path,
                                                                        scripted_sampler):
    tree = {"model": {"name": str(tiny_models["llama"])}, "data": {"data_dir": str(data_dir), "train_size": 8},
            "train": {"max_steps": 2, "precision": "fp32", "batch_size": 4, "save_every": 1},
            "eval": {"max_new_tokens": 8, "batch_size": 8},
            "improve": {"rounds": 1, "samples_per_problem": 4, "problems": 6, "seed": 3},
            "output_dir": str(tmp_path / "run")}
    cfg = build_config(tree)
    run_dir, card, round_dir, rows, self_rows = _one_round(cfg)
    # 6 problems x 4 samples: per problem only the first sample survives (a repeat, the human solution
    # again and a wrong answer are dropped)
    assert len(self_rows) == 6 and all(row["id"].endswith("~self0") for row in self_rows)
    assert all("My way" in row["answer"] and "123456" not in row["answer"] for row in self_rows)
    assert card["sources"] == {"human": 8, "self": 6, "augmented": 0} and card["rows"] == 14
    assert card["filter"]["dropped"] == {"duplicate of a kept solution": 12, "wrong answer": 6}
    assert card["round"] == 1 and card["sample_seed"] == 4 and card["source_run"] == str(run_dir)
    assert scripted_sampler[0][1:] == (4, 4)  # k and the round's seed reached the sampler
    trained = json.loads((round_dir / "model" / "train_card.json").read_text())
    assert trained["data"]["rows"] == 14 and (round_dir / "model" / "adapter").is_dir()
    assert trained["config"]["data"]["train_file"] == str(round_dir / "data.jsonl")

    # the same command again: nothing sampled, the same bytes, the trained model kept
    data_before = (round_dir / "data.jsonl").read_bytes()
    adapter_before = sorted(p.stat().st_mtime_ns for p in (round_dir / "model" / "adapter").iterdir())
    calls = len(scripted_sampler)
    again = improve_workflow(cfg, run_dir, show_progress=False)
    assert len(scripted_sampler) == calls and (round_dir / "data.jsonl").read_bytes() == data_before
    assert again[0]["sha256"] == card["sha256"]
    assert sorted(p.stat().st_mtime_ns for p in (round_dir / "model" / "adapter").iterdir()) == adapter_before

    # the same settings from scratch give byte-identical data
    other = build_config({**tree, "output_dir": str(tmp_path / "run2")})
    run2 = train_workflow(other)
    improve_workflow(other, run2, show_progress=False)
    assert (run2 / "improve" / "round-1" / "data.jsonl").read_bytes() == data_before


def test_improve_refuses_what_it_cannot_do(tiny_models, data_dir, tmp_path, run_cli):
    result = run_cli("improve", str(tmp_path / "nothing"), "-s", f"model.name={tiny_models['llama']}")
    assert result.code == 2 and result.stderr.startswith("mathtune: error:") and "not a finished run" in result.stderr
    result = run_cli("improve", str(tmp_path), "-s", "improve.mix=[human, augmented]")
    assert result.code == 2 and "improve.augmented_file" in result.stderr and "Traceback" not in result.stderr


def test_two_rounds_continue_from_the_sampled_full_model(tiny_models, data_dir, tmp_path, scripted_sampler):
    tree = {"model": {"name": str(tiny_models["llama"])}, "method": {"name": "full"},
            "data": {"data_dir": str(data_dir), "train_size": 4},
            "train": {"max_steps": 1, "precision": "fp32", "batch_size": 2},
            "eval": {"max_new_tokens": 8, "batch_size": 8},
            "improve": {"rounds": 2, "samples_per_problem": 2, "problems": 3, "start_from": "continue",
                        "max_steps": 2},
            "output_dir": str(tmp_path / "run")}
    cfg = build_config(tree)
    run_dir = train_workflow(cfg)
    first, second = improve_workflow(cfg, run_dir, show_progress=False)
    rounds = run_dir / "improve"
    assert first["sampled_model"] == str(run_dir) and second["sampled_model"] == str(rounds / "round-1" / "model")
    assert [seed for _, _, seed in scripted_sampler] == [1, 2]  # each round its own samples
    # each round trained on from the model it sampled, not from the base model
    for number, start in ((1, run_dir), (2, rounds / "round-1" / "model")):
        card = json.loads((rounds / f"round-{number}" / "model" / "train_card.json").read_text())
        assert card["config"]["model"]["name"] == str(start / "adapter") and card["steps"] == 2  # improve.max_steps
    result = build_config({**tree, "method": {"name": "lora"}, "output_dir": str(tmp_path / "lora")})
    with pytest.raises(Exception, match="needs a full fine-tuning run"):
        improve_workflow(result, train_workflow(result), show_progress=False)


def test_the_augmented_mix_adds_augment_rows_and_never_a_test_problem(data_dir, tmp_path):
    """write_round_data with mix human + augmented: `mathtune augment`'s variants join the human rows
    (its copies of the originals do not: the human rows are their own source); a variant that repeats a
    test question is dropped."""
    from mathtune.recipes.augment import augment_workflow
    from mathtune.recipes.improve import write_round_data

    tree = {"data": {"data_dir": str(data_dir), "train_size": 5}, "output_dir": str(tmp_path / "run")}
    augmented = tmp_path / "augmented.jsonl"
    augment_workflow(build_config(tree), augmented, variants=2, seed=0, include_original=True)
    variants = [json.loads(line) for line in augmented.read_text().splitlines()]
    variants = [row for row in variants if row["id"] != row["source_id"]]
    assert variants
    test_question = variants[0]["question"]  # pretend the first variant is a test problem
    cfg = build_config({**tree, "improve": {"mix": ["human", "augmented"], "augmented_file": str(augmented)}})
    round_dir = tmp_path / "round-1"
    round_dir.mkdir()
    card = write_round_data(cfg, round_dir, tmp_path / "run", tmp_path / "run", 1, [("t0", test_question)])
    rows = [json.loads(line) for line in (round_dir / "data.jsonl").read_text().splitlines()]
    assert card["sources"] == {"human": 5, "self": 0, "augmented": len(variants) - 1}
    assert [row["id"] for row in rows if row["source"] == "augmented"] == [row["id"] for row in variants[1:]]
    assert test_question not in {row["question"] for row in rows}
    assert card["filter"]["dropped"] == {"problem shares a 13-gram with a test question": 1}


def test_program_rounds_keep_sandbox_confirmed_programs_and_train_on_them(tiny_models, data_dir, tmp_path,
                                                                           scripted_sampler):
    tree = {"model": {"name": str(tiny_models["llama"])}, "prompt": {"strategy": "program"},
            "data": {"data_dir": str(data_dir), "train_size": 4},
            "train": {"max_steps": 1, "precision": "fp32", "batch_size": 2},
            "eval": {"max_new_tokens": 8, "batch_size": 8},
            "improve": {"samples_per_problem": 4, "problems": 3}, "output_dir": str(tmp_path / "run")}
    cfg = build_config(tree)
    run_dir, card, round_dir, rows, self_rows = _one_round(cfg)
    # per problem: the first program (the sandbox computes the answer) is kept; its respaced copy and the
    # reference's own program are repeats; 123456 is wrong. One of the 3 drawn problems shares a 13-gram
    # with a test question (the synthetic questions share a template): its program never enters the data.
    assert [row["program"].startswith("total = ") for row in self_rows] == [True] * 2
    assert all(row["answer"].rstrip().endswith("#### " + row["program"].split()[2]) for row in self_rows)
    assert card["filter"]["dropped"] == {"duplicate of a kept solution": 6, "wrong answer": 3,
                                         "problem shares a 13-gram with a test question": 1}
    assert card["filter"]["kept"] == 2 and card["filter"]["problems_with_a_kept_sample"] == 2
    samples = [json.loads(line) for line in (round_dir / "samples" / "samples.jsonl").read_text().splitlines()]
    assert all(row["samples"][0]["sandbox"]["ok"] for row in samples)
    trained = json.loads((round_dir / "model" / "train_card.json").read_text())
    assert trained["data"]["program_conversion"]["given_in_file"] == 2
    assert trained["data"]["examples"] == 4 + 2


def test_a_round_stopped_after_sampling_resumes_without_sampling_again(tiny_models, data_dir, tmp_path,
                                                                        scripted_sampler, monkeypatch, run_cli):
    from mathtune.recipes import improve as improve_recipe

    tree = {"model": {"name": str(tiny_models["llama"])}, "data": {"data_dir": str(data_dir), "train_size": 4},
            "train": {"max_steps": 1, "precision": "fp32", "batch_size": 2},
            "eval": {"max_new_tokens": 8, "batch_size": 8},
            "improve": {"samples_per_problem": 2, "problems": 3}, "output_dir": str(tmp_path / "run")}
    run_dir = train_workflow(build_config(tree))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    real_train = improve_recipe.train_workflow
    monkeypatch.setattr(improve_recipe, "train_workflow", killed)
    with pytest.raises(KeyboardInterrupt):
        improve_workflow(build_config(tree), run_dir, show_progress=False)
    round_dir = run_dir / "improve" / "round-1"
    assert (round_dir / "data.jsonl").is_file() and not (round_dir / "model").exists()
    monkeypatch.setattr(improve_recipe, "train_workflow", real_train)
    calls = len(scripted_sampler)
    (tmp_path / "improve.yaml").write_text(json.dumps({"improve": tree["improve"], "eval": tree["eval"]}))
    # the run's own data dir moved: --data-dir says where it is now
    moved = tmp_path / "moved-data"
    shutil.copytree(data_dir, moved)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["data"]["data_dir"] = str(tmp_path / "gone")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_cli("improve", str(run_dir), "-c", str(tmp_path / "improve.yaml"), "--data-dir", str(moved))
    assert result.code == 0, result.stderr
    assert len(scripted_sampler) == calls  # the samples were kept, not drawn again
    kept = json.loads((round_dir / "data.json").read_text())["filter"]  # one problem overlaps the test split
    assert f"round 1: kept {kept['kept']} of 6 samples ({kept['problems_with_a_kept_sample']} of 3 problems)" \
        in result.stdout and kept["kept"] >= 1
    assert (round_dir / "model" / "train_card.json").is_file()


def test_the_shipped_config_validates():
    from mathtune.config import DEFAULT_CONFIG_DIR, load_config

    cfg = load_config(DEFAULT_CONFIG_DIR / "accuracy" / "self_training.yaml")
    assert cfg.improve.problems == 2000 and cfg.improve.samples_per_problem == 4 and cfg.eval.calculator


def _one_round(cfg):
    """Train, run one improve round; the run dir, the round's card and dir, its rows and the self ones."""
    run_dir = train_workflow(cfg)
    [card] = improve_workflow(cfg, run_dir, show_progress=False)
    round_dir = run_dir / "improve" / "round-1"
    rows = [json.loads(line) for line in (round_dir / "data.jsonl").read_text().splitlines()]
    return run_dir, card, round_dir, rows, [row for row in rows if row["source"] == "self"]


def test_the_best_recipe_config_is_the_measured_model_with_majority_voting():
    """configs/accuracy/best_gsm8k.yaml must stay the recipe docs/accuracy.md measured: the full_qa_gsm8k
    model and greedy decoding, plus maj@16 with the maj@16 row's sampling settings."""
    from mathtune.config import DEFAULT_CONFIG_DIR, load_config

    best = load_config(DEFAULT_CONFIG_DIR / "accuracy" / "best_gsm8k.yaml")
    measured = load_config(DEFAULT_CONFIG_DIR / "accuracy" / "full_qa_gsm8k.yaml")
    for section in ("model", "data", "prompt", "method", "train"):
        assert getattr(best, section) == getattr(measured, section), section
    assert best.eval.num_problems is None and best.eval.calculator and best.eval.max_new_tokens == 256
    assert (best.eval.samples, best.eval.vote, best.eval.temperature, best.eval.top_p, best.eval.sample_seed) == \
        (16, "majority", 0.7, 1.0, 0)
