"""k samples per problem: seeded per sample, the shared prefix changes nothing but speed, labels are
the evaluation's, and `mathtune sample` resumes."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import gsm8k_requests

from mathtune.config import build_config
from mathtune.evaluate.decoding import draw_tokens, sampling_probs
from mathtune.evaluate.generation import HFBackend
from mathtune.evaluate.scoring import score_rows
from mathtune.prompts import get_strategy
from mathtune.recipes.sample import read_samples, sample_model


def test_samples_are_seeded_per_sample_and_differ_across_seeds(llama, data_dir):
    model, tokenizer = llama
    requests, keys = gsm8k_requests(data_dir, count=3, max_new=16), ["a", "b", "c"]
    wide = HFBackend(model, tokenizer, torch.device("cpu"), False, 12).sample(requests, keys, 4, seed=3)
    narrow = HFBackend(model, tokenizer, torch.device("cpu"), False, 4).sample(requests, keys, 4, seed=3)
    alone = HFBackend(model, tokenizer, torch.device("cpu"), False, 4).sample(requests[1:2], keys[1:2], 4, seed=3)
    other = HFBackend(model, tokenizer, torch.device("cpu"), False, 12).sample(requests, keys, 4, seed=4)
    assert wide == narrow  # the batch a problem is decoded in does not change its samples
    assert alone[0] == wide[1]  # nor do the other problems (a resume draws the same samples)
    assert [len(group) for group in wide] == [4, 4, 4]
    assert len({g.text for g in wide[0]}) > 1  # k different samples, not one repeated
    assert other != wide


def test_shared_prefix_samples_equal_unshared_ones(llama, data_dir):
    model, tokenizer = llama
    backend = HFBackend(model, tokenizer, torch.device("cpu"), False, 8)
    requests, keys = gsm8k_requests(data_dir, count=2, max_new=16), ["x", "y"]
    shared = backend.sample(requests, keys, 4, temperature=0.9, top_p=0.95, seed=1, share_prefix=True)
    unshared = backend.sample(requests, keys, 4, temperature=0.9, top_p=0.95, seed=1, share_prefix=False)
    assert shared == unshared


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.allclose(sampling_probs(logits, 1.0, 0.8), torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    assert torch.allclose(sampling_probs(logits, 1.0, 0.1), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    assert torch.allclose(sampling_probs(logits, 1.0, 1.0), torch.tensor([[0.5, 0.3, 0.15, 0.05]]))


def test_draws_follow_the_probabilities_and_never_pick_a_zero_probability_token():
    probs = torch.tensor([[0.0, 0.5, 0.3, 0.0, 0.15, 0.05, 0.0]]).expand(10_000, 7)
    uniforms = (torch.arange(10_000) + 0.5) / 10_000  # evenly spread: the counts are the probabilities
    counts = torch.bincount(draw_tokens(probs, uniforms), minlength=7).tolist()
    assert counts == [0, 5_000, 3_000, 0, 1_500, 500, 0]
    edges = draw_tokens(probs[:3], torch.tensor([0.0, 0.5, 0.9999999]))
    assert edges.tolist() == [1, 2, 5]  # u = 0 lands on the first token with mass, u -> 1 on the last
    unnormalised = torch.tensor([[0.0, 2.0, 6.0]]).expand(4, 3)  # nucleus rows are renormalised anyway
    assert draw_tokens(unnormalised, torch.tensor([0.0, 0.24, 0.26, 0.99])).tolist() == [1, 1, 2, 2]


def test_draws_over_a_vocabulary_of_several_blocks_match_the_probabilities():
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(1, 1000, generator=generator) * 4, dim=-1)  # 1000: not a block multiple
    probs[0, ::7] = 0.0  # zero-probability tokens across every block
    probs[0, 256:512] = 0.0  # and a whole empty block
    probs /= probs.sum()
    draws = 50_000
    uniforms = (torch.arange(draws, dtype=torch.float64) + 0.5) / draws
    counts = torch.bincount(draw_tokens(probs.expand(draws, -1), uniforms.float()), minlength=1000)
    assert counts[probs[0] == 0].sum() == 0
    assert (counts.double() - probs[0].double() * draws).abs().max() <= 2  # evenly spread u: exact counts


def _tree(model, data_dir, out, **evals):
    return {"model": {"name": str(model)}, "data": {"data_dir": str(data_dir)}, "output_dir": str(out),
            "eval": {"num_problems": 4, "batch_size": 8, "max_new_tokens": 16, "samples": 4, "temperature": 1.0,
                     **evals}}


def test_sample_recipe_writes_scored_samples_and_resumes(tiny_models, data_dir, tmp_path):
    out = tmp_path / "samples"
    cfg = build_config(_tree(tiny_models["llama"], data_dir, tmp_path))
    summary = sample_model(cfg, out, show_progress=False)
    rows = read_samples(out)
    assert summary["n"] == 4 and summary["k"] == 4 and len(rows) == 4
    assert all(len(row["samples"]) == 4 for row in rows)
    # each sample's labels are exactly what the evaluation's scoring gives its text
    from mathtune.evaluate.generation import Generation
    from mathtune.evaluate.scoring import eval_problems

    problems = {p.id: p for p in eval_problems(cfg)}
    for row in rows:
        generations = [Generation(s["output"], s["truncated"], s["new_tokens"]) for s in row["samples"]]
        rescored = score_rows([problems[row["id"]]] * 4, generations, get_strategy("qa"), [row["prompt"]] * 4)
        assert [r["correct"] for r in rescored] == [s["correct"] for s in row["samples"]]
        assert [r["extracted"] for r in rescored] == [s["extracted"] for s in row["samples"]]
    # killed after two problems: the rest are sampled, the first two kept, the result the same
    lines = (out / "samples.jsonl").read_text().splitlines()
    (out / "samples.jsonl").write_text("\n".join(lines[:2]) + "\n")
    resumed = sample_model(cfg, out, show_progress=False)
    assert read_samples(out) == rows
    # the summary says this launch sampled two problems, and counts every sample's tokens apart
    assert resumed["problems_this_launch"] == 2
    assert resumed["generated_tokens_all_launches"] == sum(s["new_tokens"] for row in rows for s in row["samples"])
    assert resumed["generated_tokens"] == sum(s["new_tokens"] for row in rows[2:] for s in row["samples"])
    # other settings are refused, never mixed in
    from mathtune.errors import MathtuneError

    with pytest.raises(MathtuneError, match="sample_seed"):
        sample_model(build_config(_tree(tiny_models["llama"], data_dir, tmp_path, sample_seed=9)), out,
                     show_progress=False)


def test_a_larger_k_extends_the_smaller_run_with_the_same_samples(tiny_models, data_dir, tmp_path):
    from mathtune.errors import MathtuneError

    def run(out, samples, **kwargs):
        cfg = build_config(_tree(tiny_models["llama"], data_dir, tmp_path, samples=samples))
        sample_model(cfg, out, show_progress=False, **kwargs)
        return read_samples(out)

    small = run(tmp_path / "k2", 2)
    (tmp_path / "k2" / "samples.jsonl").write_text(  # a k=2 run that stopped after three problems
        "\n".join((tmp_path / "k2" / "samples.jsonl").read_text().splitlines()[:3]) + "\n")
    extended = run(tmp_path / "k4-extended", 4, extend=tmp_path / "k2")
    direct = run(tmp_path / "k4", 4)
    assert extended == direct  # samples 0-1 kept, 2-3 drawn: the same as drawing all four
    assert [row["samples"][:2] for row in extended[:3]] == [row["samples"] for row in small[:3]]
    with pytest.raises(MathtuneError, match="ask for more"):
        run(tmp_path / "k2-again", 2, extend=tmp_path / "k2")
    other = build_config(_tree(tiny_models["llama"], data_dir, tmp_path, samples=4, temperature=0.5))
    with pytest.raises(MathtuneError, match="other settings"):
        sample_model(other, tmp_path / "k4-other", show_progress=False, extend=tmp_path / "k2")
    # samples drawn by another sampler (multinomial, before SAMPLER was recorded): same distribution,
    # other draws, so continuing them would not equal a direct k = 4 run
    fingerprint = tmp_path / "k2" / "fingerprint.json"
    older = json.loads(fingerprint.read_text())
    del older["generation"]["sampler"]
    fingerprint.write_text(json.dumps(older))
    with pytest.raises(MathtuneError, match="generation.sampler"):
        run(tmp_path / "k4-from-older", 4, extend=tmp_path / "k2")


def test_sample_cli_and_bad_input(tiny_models, data_dir, tmp_path, run_cli):
    out = tmp_path / "cli-samples"
    done = run_cli("sample", "--base", "--model", str(tiny_models["llama"]), "--data-dir", str(data_dir),
                   "--eval-size", "2", "-k", "2", "-s", "eval.max_new_tokens=8", "-o", str(out))
    assert done.code == 0, done.stderr
    assert "2 problems x 2 samples" in done.stdout and len(read_samples(out)) == 2
    bad = run_cli("sample", "--base", "--model", str(tiny_models["llama"]), "--data-dir", str(data_dir),
                  "--top-p", "1.5", "-o", str(tmp_path / "x"))
    assert bad.code == 2 and bad.stderr.startswith("mathtune: error:") and "Traceback" not in bad.stderr


@pytest.mark.parametrize(("argv", "rows"), [((), 64), (("-s", "eval.batch_size=8"), 8),
                                             (("-s", "eval.batch_size=8", "--rows", "32"), 32)])
def test_sample_rows_default_yields_to_a_set_batch_size(tiny_models, data_dir, tmp_path, run_cli, monkeypatch,
                                                        argv, rows):
    import mathtune.recipes.sample as sample_recipe

    seen = {}

    def fake_sample_model(cfg, out, *args, **kwargs):
        seen["rows"] = cfg.eval.batch_size
        return {"n": 0, "k": cfg.eval.samples, "wall_seconds": 0.0, "generated_tokens_per_second": 0.0}

    monkeypatch.setattr(sample_recipe, "sample_model", fake_sample_model)
    done = run_cli("sample", "--base", "--model", str(tiny_models["llama"]), "--data-dir", str(data_dir),
                   "-k", "2", *argv, "-o", str(tmp_path / "rows"))
    assert done.code == 0, done.stderr
    assert seen["rows"] == rows


def test_seq2seq_samples_are_seeded(tiny_models, data_dir):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["t5"])
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_models["t5"])
    backend = HFBackend(model, tokenizer, torch.device("cpu"), True, 4)
    requests = gsm8k_requests(data_dir, count=2, max_new=8)
    first = backend.sample(requests, ["a", "b"], 3, seed=5)
    assert first == backend.sample(requests, ["a", "b"], 3, seed=5) and [len(g) for g in first] == [3, 3]
