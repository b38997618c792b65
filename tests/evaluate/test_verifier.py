"""The verifier: split by problem, classes weighted evenly, a PEFT scalar-head adapter that learns a visible
signal, and scores that `curve` reranks with."""

from __future__ import annotations

import json
import random

import pytest

from mathtune.errors import MathtuneError
from mathtune.evaluate.metrics import auc
from mathtune.recipes.verifier import fewer_wrong, labelled, right_class_weight, samples_by_problem, split_by_problem


def rows(count: int, k: int = 4, seed: int = 0) -> list[dict]:
    """Problems whose right samples say 'checked' and wrong ones 'guess': a signal a verifier can learn."""
    rng = random.Random(seed)
    out = []
    for index in range(count):
        samples = []
        for j in range(k):
            right = j == 0 or rng.random() < 0.2
            answer = "7" if right else str(rng.randint(8, 99))
            samples.append({"output": f" {'checked' if right else 'guess'} so #### {answer}",
                            "extracted": {"numeric-match": answer}, "correct": {"numeric-match": right}})
        out.append({"id": f"p{index}", "prompt": f"Question: what is {index}?\nAnswer:", "samples": samples})
    return out


def test_split_keeps_every_problem_on_one_side_and_weighting_evens_the_classes():
    data = rows(30)
    train, dev = split_by_problem(data, 0.2, seed=1)
    assert len(dev) == 6 and not {r["id"] for r in train} & {r["id"] for r in dev}
    assert split_by_problem(data, 0.2, seed=1) == (train, dev)
    examples = labelled(train, "numeric-match")
    assert all(label == float(s["correct"]["numeric-match"]) for (_, label), s in
               zip(examples, [s for r in train for s in r["samples"]], strict=True))
    right = sum(y for _, y in examples)
    assert 0 < right < len(examples)
    assert right_class_weight(examples) * right == len(examples) - right  # both classes weigh the same
    fewer = fewer_wrong(examples, 1.0, seed=0)
    assert sum(y for _, y in fewer) == right and len(fewer) == 2 * right  # all right ones, 1 wrong per right
    assert set(fewer) <= set(examples) and fewer_wrong(examples, 100.0, seed=0) == examples
    with pytest.raises(MathtuneError, match="both are needed"):
        right_class_weight([(text, 0.0) for text, _ in examples])
    assert auc([0.9, 0.8, 0.1], [1.0, 0.0, 0.0]) == 1.0 and auc([0.5, 0.5], [1.0, 0.0]) == 0.5


def test_two_rounds_samples_of_one_problem_merge_and_a_repeated_solution_counts_once():
    first, second = rows(3, k=2, seed=0), rows(4, k=3, seed=1)
    merged = samples_by_problem(first + second)
    assert [r["id"] for r in merged] == ["p0", "p1", "p2", "p3"]
    for row in merged:
        earlier = [s["output"] for r in first if r["id"] == row["id"] for s in r["samples"]]
        later = [s["output"] for r in second if r["id"] == row["id"] for s in r["samples"]]
        # the first dir's samples as they are (repeats within a dir are the model's), then the new ones
        assert [s["output"] for s in row["samples"]] == earlier + [o for o in later if o not in earlier]
    assert samples_by_problem(first + first) == first
    assert sum(len(r["samples"]) for r in merged) < sum(len(r["samples"]) for r in first + second)
    with pytest.raises(MathtuneError, match="two different prompts"):
        samples_by_problem(first + [{**first[0], "prompt": "other"}])


def test_auc_is_the_share_of_right_wrong_pairs_won_ties_half():
    rng = random.Random(0)
    for _ in range(20):
        scores = [rng.choice([0.1, 0.2, 0.5, 0.7, 0.9]) for _ in range(30)]  # many ties
        labels = [float(rng.random() < 0.3) for _ in range(30)]
        both = list(zip(scores, labels, strict=True))
        pairs = [(r, w) for r, y in both if y for w, z in both if not z]
        if not pairs:
            continue
        assert auc(scores, labels) == pytest.approx(sum((r > w) + 0.5 * (r == w) for r, w in pairs) / len(pairs))
    assert auc([0.3, 0.4], [1.0, 1.0]) is None


def test_verifier_trains_saves_a_peft_adapter_and_scores_samples(tiny_models, tmp_path, run_cli):
    train_dir, test_dir = tmp_path / "train-samples", tmp_path / "test-samples"
    for directory, data in ((train_dir, rows(40, seed=1)), (test_dir, rows(6, seed=2))):
        directory.mkdir()
        (directory / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    out = tmp_path / "verifier"
    done = run_cli("verifier", "train", str(train_dir), "-o", str(out), "--model", str(tiny_models["llama"]),
                   "-s", "verifier.lr=0.01", "-s", "verifier.epochs=3", "-s", "verifier.max_length=64",
                   "-s", "verifier.dev_fraction=0.25", "-s", "train.precision=fp32")
    assert done.code == 0, done.stderr
    card = json.loads((out / "verifier_card.json").read_text())
    assert card["train_problems"] == 30 and card["dev_problems"] == 10
    assert card["dev"]["auc"] > 0.9  # 'checked' vs 'guess' on problems it never saw
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and "score" in adapter["modules_to_save"]
    done = run_cli("verifier", "score", str(out), str(test_dir))
    assert done.code == 0, done.stderr
    scored = [json.loads(line) for line in (test_dir / "verifier_scores.jsonl").read_text().splitlines()]
    assert len(scored) == 6 and all(len(r["scores"]) == 4 for r in scored)
    assert all(0 <= s <= 1 for r in scored for s in r["scores"])
    done = run_cli("curve", str(test_dir))
    curve = json.loads((test_dir / "curve.json").read_text())
    assert curve["rerank"]["methods"]["verifier@4"]["accuracy"] == 1.0  # it picks the 'checked' sample
    # k = 6 extending these k = 4 samples (`sample --extend`): the 4 kept samples' scores are reused,
    # not recomputed (marked here so reuse is visible); a problem whose kept texts differ is rescored
    extended = tmp_path / "test-samples-k6"
    extended.mkdir()
    more = rows(6, k=6, seed=2)
    for old_row, new_row in zip(rows(6, seed=2), more, strict=True):
        new_row["samples"][:4] = old_row["samples"]
    more[5]["samples"][0] = {**more[5]["samples"][0], "output": " changed #### 7"}
    (extended / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in more))
    (extended / "sampling.json").write_text(json.dumps({"split": "test", "extended_from": str(test_dir)}))
    marked = [{**r, "scores": [0.125, 0.25, 0.375, 0.5]} for r in scored]
    (test_dir / "verifier_scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in marked))
    assert run_cli("verifier", "score", str(out), str(extended)).code == 0
    rescored = [json.loads(line) for line in (extended / "verifier_scores.jsonl").read_text().splitlines()]
    assert all(len(r["scores"]) == 6 for r in rescored)
    assert all(r["scores"][:4] == [0.125, 0.25, 0.375, 0.5] for r in rescored[:5])
    assert rescored[5]["scores"][:4] != [0.125, 0.25, 0.375, 0.5]
    assert [round(s, 5) for s in rescored[5]["scores"][1:4]] == [round(s, 5) for s in scored[5]["scores"][1:4]]
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = run_cli("verifier", "train", str(empty), "-o", str(tmp_path / "v2"), "--model", str(tiny_models["llama"]))
    assert bad.code == 2 and bad.stderr.startswith("mathtune: error:") and "no samples.jsonl" in bad.stderr
    assert not (tmp_path / "v2").exists()
    (test_dir / "sampling.json").write_text(json.dumps({"split": "test"}))
    bad = run_cli("verifier", "train", str(test_dir), "-o", str(tmp_path / "v3"), "--model", str(tiny_models["llama"]))
    assert bad.code == 2 and "samples of test problems" in bad.stderr


@pytest.mark.parametrize("arch", ["llama", "phi"])
def test_shared_prompt_scores_equal_scoring_each_text_whole(tiny_models, arch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mathtune.models.verifier import lora_verifier, scalar_head_model, score_solutions, score_texts

    tokenizer = AutoTokenizer.from_pretrained(tiny_models[arch])
    causal = AutoModelForCausalLM.from_pretrained(tiny_models[arch], dtype=torch.float32)
    torch.manual_seed(0)
    model = lora_verifier(scalar_head_model(causal, tokenizer), r=4, alpha=8).eval()
    for module in model.modules():  # LoRA's B starts at zero: make the adapter change the scores
        if hasattr(module, "lora_B"):
            torch.nn.init.normal_(module.lora_B["default"].weight, std=0.5)
    prompt = "Question: Tom has 3 apples and buys 4 more. How many?\nAnswer:"
    outputs = [" 3 + 4 = 7 #### 7", " He has 12", " 3 * 4 = 12 so #### 12 and more words here", " 7"]
    whole = score_texts(model, tokenizer, [prompt + o for o in outputs], max_length=256, batch_size=4)
    for rows in (1, 3, 4):  # groups of solutions by length, each reading the prompt once
        shared = score_solutions(model, tokenizer, prompt, outputs, max_length=256, rows=rows)
        assert torch.allclose(torch.tensor(shared), torch.tensor(whole), atol=1e-5)
    assert len(set(round(s, 4) for s in whole)) == len(outputs)  # the texts are told apart
    merged = score_solutions(model.merge_and_unload(), tokenizer, prompt, outputs, max_length=256)
    assert torch.allclose(torch.tensor(merged), torch.tensor(whole), atol=1e-4)
