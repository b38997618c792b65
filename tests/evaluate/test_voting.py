"""Test-time compute in `mathtune eval`: eval.vote (majority, verifier-weighted) over k samples seeded per
problem, greedy and voted scores side by side with McNemar between them, in the metrics and the comparison."""

from __future__ import annotations

import json

import pytest

from mathtune.compare import compare_runs, render_comparison_markdown
from mathtune.config import build_config
from mathtune.errors import MathtuneError
from mathtune.evaluate.generation import Generation, HFBackend
from mathtune.evaluate.sharding import Processes
from mathtune.recipes import evaluate as evaluate_recipe
from mathtune.recipes.evaluate import evaluate_model

N = 6


def _cfg(model, data_dir, **evals):
    return build_config({"model": {"name": str(model)}, "data": {"data_dir": str(data_dir)},
                         "train": {"precision": "fp32"},
                         "eval": {"num_problems": N, "batch_size": 2, "max_new_tokens": 8, "samples": 3,
                                  "perplexity": False, **evals}})


@pytest.fixture
def scripted_sampler(monkeypatch, data_dir):
    """Per problem: even positions in the draw get 2 right samples of 3 (the majority is right), odd ones
    1 right and 2 equal wrong ones (the majority is wrong). The tiny random model's greedy is never right."""
    rows = [json.loads(line) for line in (data_dir / "gsm8k" / "test.jsonl").read_text().splitlines()]
    answers = {row["question"]: row["answer"].rsplit("#### ", 1)[1] for row in rows}
    calls = []

    def sample(self, requests, keys, k, *, temperature=1.0, top_p=1.0, seed=0, share_prefix=True, first=0):
        calls.append((list(keys), seed))
        drawn = []
        for request in requests:
            answer = answers[request.prompt.split("Q: ", 1)[1].split("\nA:", 1)[0]]
            right = int(answer) % 2 == 0
            texts = [f" so #### {answer}", f" then #### {answer}" if right else " #### 1", " #### 1"]
            drawn.append([Generation(text, False, 3) for text in texts[:k]])
        return drawn

    monkeypatch.setattr(HFBackend, "sample", sample)
    return answers, calls


def test_majority_vote_beside_greedy_with_mcnemar(tiny_models, data_dir, tmp_path, scripted_sampler):
    answers, calls = scripted_sampler
    metrics = evaluate_model(_cfg(tiny_models["llama"], data_dir, vote="majority", sample_seed=5), tmp_path / "eval",
                             "base", show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    expected = [int(row["reference_answer"]) % 2 == 0 for row in rows]
    assert [row["vote"]["correct"]["numeric-match"] for row in rows] == expected
    assert all(len(row["vote"]["samples"]) == 3 and row["vote"]["weights"] is None for row in rows)
    voted = metrics["voted"]
    assert voted["method"] == "majority" and voted["k"] == 3 and voted["n"] == N
    assert voted["scores"]["numeric-match"]["exact_match"] == pytest.approx(sum(expected) / N)
    assert metrics["scores"]["numeric-match"]["exact_match"] == 0  # greedy, the random model
    test = voted["mcnemar_vs_greedy"]["numeric-match"]
    assert (test["b"], test["c"]) == (0, sum(expected)) and sum(expected) > 0
    # the sampler drew with the problems' ids as keys and eval.sample_seed as seed
    assert sorted(key for keys, _ in calls for key in keys) == sorted(row["id"] for row in rows)
    assert {seed for _, seed in calls} == {5}
    # the comparison shows greedy and voted side by side
    text = render_comparison_markdown(compare_runs([tmp_path / "eval"], ["base"]))
    assert "Greedy vs voted" in text and f"| base | majority | 3 | 0.0 ± 0.0 | {100 * sum(expected) / N:.1f}" in text
    # and so does the report, Markdown and HTML
    from mathtune.report.build import write_report

    written = write_report([tmp_path / "eval"], tmp_path / "report")
    sentence = (f"greedy numeric-match 0.0 %, majority@3 {100 * sum(expected) / N:.1f} % on the same {N} problems: "
                f"only greedy right 0, only the vote right {sum(expected)}")
    assert sentence in written["markdown"].read_text() and sentence in written["html"].read_text()


def test_verifier_weighted_vote_follows_the_weights(tiny_models, data_dir, tmp_path, scripted_sampler, monkeypatch):
    answers, _ = scripted_sampler

    def scorer(cfg):  # a verifier that trusts 'so' solutions (the first, always right) far above the rest
        return lambda prompt, outputs: [0.9 if output.startswith(" so") else 0.1 for output in outputs]

    monkeypatch.setattr(evaluate_recipe, "verifier_scorer", scorer)
    cfg = _cfg(tiny_models["llama"], data_dir, vote="verifier-weighted", verifier=str(tmp_path / "verifier"))
    metrics = evaluate_model(cfg, tmp_path / "eval", "base", show_progress=False)
    assert metrics["voted"]["scores"]["numeric-match"]["exact_match"] == 1.0  # 0.9 beats 0.1 + 0.1
    assert metrics["voted"]["mcnemar_vs_greedy"]["numeric-match"]["c"] == N


def test_voted_samples_do_not_depend_on_the_chunk_or_the_batch(tiny_models, data_dir, tmp_path):
    """Each sample has its own seed from (sample_seed, problem, index): a process's share of the problems
    draws what one process draws for them, so eval.vote may run under `accelerate launch`."""
    votes = []
    for batch, size in ((1, N), (4, N), (4, 2)):
        out = tmp_path / f"b{batch}-n{size}"
        cfg = _cfg(tiny_models["llama"], data_dir, vote="majority", batch_size=batch, temperature=1.0)
        cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"num_problems": size})})
        evaluate_model(cfg, out, "base", show_progress=False)
        rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        votes.append({row["id"]: row["vote"]["samples"] for row in rows})
    assert votes[0] == votes[1]
    assert all(votes[0][key] == value for key, value in votes[2].items())
    outputs = [sample["output"] for samples in votes[0].values() for sample in samples]
    assert len(set(outputs)) > 1  # really sampled


def test_a_vote_runs_under_several_processes_and_the_old_maj_at_k_is_refused(tiny_models, data_dir, tmp_path,
                                                                            monkeypatch):
    class Reached(Exception):
        pass

    def stop_here(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(evaluate_recipe, "current_processes", lambda: Processes(0, 2))
    monkeypatch.setattr(evaluate_recipe, "eval_problems", stop_here)
    with pytest.raises(MathtuneError, match="eval.vote=majority"):
        evaluate_recipe.evaluate(_cfg(tiny_models["llama"], data_dir), None, tmp_path / "old", "base")
    with pytest.raises(Reached):  # past the refusal
        evaluate_recipe.evaluate(_cfg(tiny_models["llama"], data_dir, vote="majority"), None, tmp_path / "new", "base")


def test_bad_vote_settings_are_one_line_errors(run_cli, tiny_models, data_dir, tmp_path):
    for sets, message in ((["eval.vote=majority", "eval.samples=1"], "set eval.samples to 2 or more"),
                          (["eval.vote=verifier-weighted", "eval.samples=4"], "needs eval.verifier"),
                          (["eval.vote=best"], "eval.vote")):
        result = run_cli("eval", "--base", "--model", str(tiny_models["llama"]), "--data-dir", str(data_dir),
                         "-o", str(tmp_path / "out"), *[arg for item in sets for arg in ("-s", item)])
        assert result.code == 2 and result.stderr.startswith("mathtune: error:") and message in result.stderr
        assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_run_reports_greedy_and_voted_for_base_and_tuned(tiny_models, data_dir, tmp_path, scripted_sampler):
    from mathtune.recipes.run import run_workflow

    cfg = build_config({"model": {"name": str(tiny_models["llama"])}, "data": {"data_dir": str(data_dir),
                        "train_size": 4}, "train": {"max_steps": 1, "precision": "fp32", "batch_size": 2},
                        "eval": {"num_problems": N, "batch_size": 4, "max_new_tokens": 8, "samples": 3,
                                 "vote": "majority", "perplexity": False},
                        "output_dir": str(tmp_path / "run")})
    card = run_workflow(cfg)
    for label in ("base", "tuned"):
        assert card[label]["voted"]["method"] == "majority" and card[label]["voted"]["n"] == N
    text = (tmp_path / "run" / "comparison.md").read_text()
    assert "| base | majority | 3 |" in text and "| tuned | majority | 3 |" in text


def test_a_backend_without_the_seeded_sampler_is_refused_before_writing(tiny_models, data_dir, tmp_path):
    class GreedyOnly:
        def generate(self, requests, **kwargs):
            raise AssertionError("never reached")

    with pytest.raises(MathtuneError, match="eval.vote needs the transformers backend's seeded sampler"):
        evaluate_recipe.evaluate(_cfg(tiny_models["llama"], data_dir, vote="majority"), GreedyOnly(),
                                 tmp_path / "out", "base")
    assert not (tmp_path / "out").exists()
