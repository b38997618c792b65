"""What an evaluation computes, without writing a file: the problems drawn, their prompts and stop
strings, each generation's scores and failure label, the summary, and the dev-slice accuracy.

The recipe that wires these to a backend and writes `predictions.jsonl` and `metrics.json` (batch by
batch, resumable, with a reproducibility record) is recipes/evaluate.py.
"""

from __future__ import annotations

from typing import Any

from mathtune.config import RunConfig
from mathtune.data.contamination import problems_report
from mathtune.data.problems import LoadedSplits, Problem, sample_problems
from mathtune.errors import MathtuneError
from mathtune.evaluate.extraction import INVALID, score_answer
from mathtune.evaluate.failures import classify_failure, failure_counts
from mathtune.evaluate.generation import Backend, Generation, GenerationRequest
from mathtune.evaluate.lm_eval_bridge import shipped_task
from mathtune.evaluate.metrics import mean_and_stderr, perplexity_from_nll
from mathtune.prompts import (
    PromptStrategy,
    few_shot_prefix,
    get_strategy,
    per_problem_prefixes,
    render_prompts,
)


def eval_problems(cfg: RunConfig, loaded: LoadedSplits | None = None) -> list[Problem]:
    problems = (loaded or LoadedSplits()).of(cfg, cfg.eval.split)
    drawn = sample_problems(problems, cfg.eval.num_problems, cfg.eval.seed)
    if cfg.eval.perturbed:  # same ids, new numbers: pairs with the original evaluation in `compare`
        from mathtune.data.augment import perturbed_copies

        drawn, _ = perturbed_copies(drawn, cfg.eval.seed)
    return drawn


def check_run(cfg: RunConfig, eval_problems: list[Problem], train_problems: list[Problem] | None = None,
              loaded: LoadedSplits | None = None) -> dict[str, Any]:
    """Contamination report for a run's config: its train split (or the rows trained on) vs
    `eval_problems` (data/contamination.py). Never fails an evaluation: a missing train split gives
    ``{"skipped": reason}``."""
    if train_problems is None:
        if cfg.eval.split == "train":
            return {"skipped": "evaluating on the train split itself"}
        try:
            train_problems = (loaded or LoadedSplits()).of(cfg, "train")
        except MathtuneError as exc:
            return {"skipped": str(exc)}
    return problems_report(train_problems, eval_problems)


def build_prompts(cfg: RunConfig, problems: list[Problem], loaded: LoadedSplits | None = None
                  ) -> tuple[list[str], dict[str, Any]]:
    """Prompts with the seeded few-shot prefix; returns the record of what was used."""
    loaded = loaded or LoadedSplits()
    strategy = get_strategy(cfg.prompt.strategy)
    prefix, shot_ids = "", []
    if cfg.prompt.few_shot and strategy.few_shot_draw == "per-problem":
        return _per_problem_prompts(cfg, strategy, problems, loaded)
    if cfg.prompt.few_shot and strategy.few_shot_draw == "task":
        prefix = task_shots_prefix(strategy, cfg.prompt.few_shot)
        shot_ids = [f"{strategy.task}-shot-{i}" for i in range(cfg.prompt.few_shot)]
    elif cfg.prompt.few_shot:
        pool = loaded.of(cfg, "train")
        programs = _programs_for(pool) if strategy.writes_programs else None
        prefix, shot_ids = few_shot_prefix(strategy, pool, cfg.prompt.few_shot, cfg.eval.seed, programs)
    prompts = [prefix + strategy.format_prompt(p.question) for p in problems]
    record = {"strategy": strategy.name, "template": strategy.prompt, "few_shot": cfg.prompt.few_shot,
              "shot_ids": shot_ids, "chat_template": cfg.prompt.chat_template}
    return prompts, record


def task_shots_prefix(strategy: PromptStrategy, count: int) -> str:
    """The first `count` of the lm-eval task's fixed examples (its `fewshot_config.samples`, sampler
    first_n), laid out as lm-eval lays them: prompt, target delimiter " ", target, then the separator."""
    samples = shipped_task(strategy.task)["fewshot_config"]["samples"]
    if count > len(samples):
        raise MathtuneError(f"prompt strategy {strategy.name} has {len(samples)} fixed examples; "
                            f"few_shot {count} asks for more")
    return "".join(strategy.format_prompt(shot["question"]) + " " + shot["target"] + strategy.shot_separator
                   for shot in samples[:count])


def _per_problem_prompts(cfg: RunConfig, strategy: PromptStrategy,
                         problems: list[Problem], loaded: LoadedSplits) -> tuple[list[str], dict[str, Any]]:
    """lm-eval's draw: shots for each problem in test-file order, so `lm_eval --samples` matches."""
    pool = loaded.of(cfg, "train")
    position = {p.id: i for i, p in enumerate(loaded.of(cfg, cfg.eval.split))}
    ordered = sorted(problems, key=lambda p: position[p.id])
    prefixes = per_problem_prefixes(strategy, pool, ordered, cfg.prompt.few_shot, cfg.eval.seed)
    prompts = [prefixes[p.id][0] + strategy.format_prompt(p.question) for p in problems]
    record = {"strategy": strategy.name, "template": strategy.prompt, "few_shot": cfg.prompt.few_shot,
              "few_shot_draw": "per-problem", "shot_ids": {p.id: prefixes[p.id][1] for p in problems},
              "chat_template": cfg.prompt.chat_template}
    return prompts, record


def _programs_for(pool: list[Problem]) -> dict[str, str]:
    from mathtune.data.programs import convert_solutions

    converted, _ = convert_solutions([(p.solution, p.answer) for p in pool])
    return {p.id: prog for p, prog in zip(pool, converted, strict=True) if prog is not None}


def stop_strings(cfg: RunConfig, strategy: PromptStrategy) -> tuple[str, ...]:
    return tuple(cfg.eval.stop) if cfg.eval.stop is not None else strategy.stop


def score_rows(problems: list[Problem], generations: list[Generation], strategy: PromptStrategy,
               prompts: list[str]) -> list[dict[str, Any]]:
    texts, sandbox_results = strategy.answer_texts([g.text for g in generations])
    rows = []
    for index, (problem, generation) in enumerate(zip(problems, generations, strict=True)):
        text = texts[index]
        extracted, correct = score_answer(text, problem.solution, problem.answer, problem.kind, strategy.task)
        row = {"id": problem.id, "question": problem.question, "reference": problem.solution,
               "reference_answer": problem.answer, "prompt": prompts[index], "output": generation.text,
               "extracted": extracted, "correct": correct, "truncated": generation.truncated,
               "new_tokens": generation.new_tokens}
        if sandbox_results:
            result = sandbox_results[index]
            row["sandbox"] = {"ok": result.ok, "answer": result.answer, "reason": result.reason}
        # Categorised wherever lm-eval's strict score fails, so `answer-format` (the right number in
        # a form strict-match does not read) can fire. The categories read numbers; a multiple-choice
        # answer is only truncated, missing, or wrong.
        if not correct["strict-match"] and problem.kind == "choice":
            row["failure"] = ("truncated" if generation.truncated else "no-final-answer"
                              if extracted["flexible-extract"] == INVALID else "wrong-reasoning")
        elif not correct["strict-match"]:
            row["failure"] = classify_failure(problem.question, text or generation.text, problem.answer,
                                              generation.truncated)
        rows.append(row)
    return rows


def score_names(rows: list[dict[str, Any]]) -> list[str]:
    """The scores these rows carry, in order (numbers: strict/flexible/numeric/math-verify; MATH has
    no numeric-match; ARC only its letter scores)."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row["correct"]))
    return list(names)


def summarize_predictions(rows: list[dict[str, Any]]) -> dict[str, Any]:
    scores = {}
    for name in score_names(rows):
        value, stderr = mean_and_stderr([bool(r["correct"].get(name)) for r in rows])
        scores[name] = {"exact_match": value, "stderr": stderr}
    nll = [r["reference_nll"] for r in rows if r.get("reference_nll") is not None]
    tokens = [r["reference_tokens"] for r in rows if r.get("reference_tokens")]
    perplexity = perplexity_from_nll(sum(nll), sum(tokens)) if tokens else None
    return {"n": len(rows), "scores": scores, "perplexity": perplexity,
            "truncated": sum(bool(r["truncated"]) for r in rows),
            "failures": failure_counts(rows)}


def quick_accuracy(cfg: RunConfig, backend: Backend, problems: list[Problem]) -> dict[str, float]:
    """Greedy accuracy on a few problems with the run's prompt and the same extractor as `evaluate`
    (used on the dev slice during training; writes nothing)."""
    strategy = get_strategy(cfg.prompt.strategy)
    prompts = [strategy.format_prompt(p.question) for p in problems]
    if getattr(backend, "tokenizer", None) is not None:
        prompts = render_prompts(backend.tokenizer, prompts, cfg.prompt.chat_template)
    requests = [GenerationRequest(p, stop_strings(cfg, strategy), cfg.eval.max_new_tokens, loop_stop=cfg.eval.loop_stop)
                for p in prompts]
    rows = score_rows(problems, backend.generate(requests), strategy, prompts)
    return {name: sum(bool(r["correct"][name]) for r in rows) / len(rows) for name in score_names(rows)}


def text_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    from mathtune.evaluate.metrics import rouge1, semantic_similarity

    outputs = [r["output"] for r in rows]
    references = [r["reference"] for r in rows]
    return {"rouge1": rouge1(outputs, references), "semantic_similarity": semantic_similarity(outputs, references)}
