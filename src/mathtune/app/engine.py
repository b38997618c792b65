"""What the app does, with no UI in it: pick models from run dirs, stream answers, draw problems.

The app is a thin shell over the same API as the CLI: `build_backend` loads a model (plus the tuned
weights of a run dir), `build_prompts` makes the prompt exactly as evaluation does, extraction and
scoring are the evaluator's, and programs run in the same sandbox.
"""

from __future__ import annotations

import random
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mathtune.config import RunConfig, build_config, load_config
from mathtune.data.problems import Problem, load_split
from mathtune.errors import MathtuneError
from mathtune.evaluate.extraction import extract_all, score_all
from mathtune.evaluate.generation import cut_at_stop
from mathtune.io import read_jsonl_tolerant
from mathtune.prompts import extract_program, get_strategy

MAX_QUESTION_CHARS = 2000
MAX_NEW_TOKENS = 512  # the UI's cap: a demo answer, not a benchmark run
STREAM_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Run:
    name: str
    run_dir: Path
    config: RunConfig


@dataclass
class Engine:
    runs: dict[str, Run]
    models: list[str]
    default_config: RunConfig
    max_loaded: int = 4  # models kept in memory; the least recently used is dropped
    int8_decode: bool = False  # eval.int8_decode for every model (`mathtune app --int8-decode`)
    pool: list[dict[str, Any]] = field(default_factory=list)  # outputs available for blind rating
    _backends: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _test_problems: list[Problem] | None = None

    @classmethod
    def from_paths(cls, run_dirs: list[Path], model: str | None = None, data_dir: str | None = None,
                   int8_decode: bool = False) -> Engine:
        runs: dict[str, Run] = {}
        for run_dir in run_dirs:
            if not (run_dir / "config.yaml").is_file():
                raise MathtuneError(f"{run_dir} is not a run directory (no config.yaml)")
            cfg = load_config(run_dir / "config.yaml")
            if data_dir:
                cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"data_dir": data_dir})})
            name = run_dir.name if run_dir.name not in runs else str(run_dir)
            runs[name] = Run(name, run_dir, cfg)
        models = list(dict.fromkeys(([model] if model else []) + [r.config.model.name for r in runs.values()]))
        if not models:
            raise MathtuneError("the app needs a model: pass --model or a run directory")
        if runs:
            default = next(iter(runs.values())).config
        else:
            default = build_config({"model": {"name": models[0]}, "data": {"data_dir": data_dir}})
        engine = cls(runs=runs, models=models, default_config=default, int8_decode=int8_decode)
        for run in runs.values():
            engine.pool += pool_from_run(run)
        return engine

    def config_for(self, model: str, run_name: str | None, strategy: str, max_new_tokens: int,
                   calculator: bool | None = None) -> RunConfig:
        """The run's own config for its tuned model; the same settings (or the defaults) for a base model.
        Its recorded eval settings are the default (calculator decoding included); `calculator` overrides."""
        if model not in self.models:
            raise MathtuneError(f"unknown base model '{model}' (choose from {', '.join(self.models)})")
        get_strategy(strategy)
        if run_name:
            if run_name not in self.runs:
                raise MathtuneError(f"unknown run '{run_name}' (choose from {', '.join(self.runs)})")
            cfg = self.runs[run_name].config
            if cfg.model.name != model:
                raise MathtuneError(
                    f"run '{run_name}' was trained on {cfg.model.name}, not {model}; pick that base model"
                )
        else:
            cfg = self.default_config.model_copy(
                update={"model": self.default_config.model.model_copy(update={"name": model})}
            )
        if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
            raise MathtuneError(f"max new tokens must be between 1 and {MAX_NEW_TOKENS}")
        return cfg.model_copy(
            update={
                "prompt": cfg.prompt.model_copy(update={"strategy": strategy}),
                "eval": cfg.eval.model_copy(update={"max_new_tokens": max_new_tokens, "calculator": (
                    cfg.eval.calculator if calculator is None else bool(calculator)),
                    "int8_decode": self.int8_decode or cfg.eval.int8_decode}),
            }
        )

    def backend(self, cfg: RunConfig, run_name: str | None) -> Any:
        from mathtune.evaluate.backend import build_backend

        adapter = self.runs[run_name].run_dir / "adapter" if run_name else None
        key = (cfg.model.name, str(adapter))
        with self._lock:
            if key not in self._backends:
                while len(self._backends) >= self.max_loaded:
                    self._backends.popitem(last=False)
                self._backends[key] = build_backend(cfg, adapter)[0]
            self._backends.move_to_end(key)
            return self._backends[key]

    def prompt_for(self, cfg: RunConfig, question: str, tokenizer: Any) -> str:
        from mathtune.evaluate.scoring import build_prompts
        from mathtune.prompts import render_prompts

        prompts, _ = build_prompts(cfg, [Problem(id="app", question=question, solution="", answer="")])
        return render_prompts(tokenizer, prompts, cfg.prompt.chat_template)[0]

    def stream(self, cfg: RunConfig, run_name: str | None, question: str) -> Iterator[str]:
        """Yield the answer text so far, token by token, cut at the strategy's stop strings."""
        from mathtune.evaluate.scoring import stop_strings

        question = check_question(question)
        backend = self.backend(cfg, run_name)
        stops = stop_strings(cfg, get_strategy(cfg.prompt.strategy))
        yield from stream_generate(
            backend, self.prompt_for(cfg, question, backend.tokenizer), stops, cfg.eval.max_new_tokens,
            calculator=cfg.eval.calculator, loop_stop=cfg.eval.loop_stop,
        )

    def random_problem(self, seed: int | None = None) -> Problem:
        if self._test_problems is None:
            cfg = self.default_config
            self._test_problems = load_split(cfg.data, cfg.resolved_data_dir(), "test")
        if not self._test_problems:
            raise MathtuneError("the test split is empty")
        return random.Random(seed).choice(self._test_problems)

    def add_live(self, question: str, outputs: dict[str, str], reference_answer: str | None) -> None:
        outputs = {model: text for model, text in outputs.items() if text.strip()}
        if outputs:
            self.pool.append(
                {
                    "problem_id": f"live-{len(self.pool)}",
                    "question": question,
                    "reference_answer": reference_answer,
                    "outputs": outputs,
                }
            )


def check_question(question: str | None) -> str:
    question = (question or "").strip()
    if not question:
        raise MathtuneError("type a math word problem, or draw a random GSM8K test problem")
    if len(question) > MAX_QUESTION_CHARS:
        raise MathtuneError(
            f"the problem is {len(question):,} characters long; the limit is "
            f"{MAX_QUESTION_CHARS:,}. Shorten it and try again"
        )
    return question


CALCULATOR_WINDOW = 32  # generated tokens decoded to look for an open `<<expr=` annotation


class LoopStop:
    """A `generate` stopping criterion: the generated tokens end in a repeating block (`repeating_tail`)."""

    def __init__(self, prompt_length: int, loop_stop: tuple[int, int]) -> None:
        self.prompt_length, self.loop_stop = prompt_length, loop_stop

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        from mathtune.evaluate.decoding import repeating_tail

        return torch.tensor([repeating_tail(row[self.prompt_length:].tolist(), *self.loop_stop) for row in input_ids],
                            dtype=torch.bool, device=input_ids.device)


class CalculatorForcing:
    """Calculator decoding inside transformers' `generate` (a logits processor, one row): once the
    generated text ends in an open ``<<expr=``, the tokens of ``value>>`` are forced one per step,
    as the evaluation's own decoding loop does (evaluate/decoding.py)."""

    def __init__(self, tokenizer: Any, prompt_length: int) -> None:
        self.tokenizer, self.prompt_length, self.forced = tokenizer, prompt_length, []
        self.calls = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        from mathtune.evaluate.calculator import complete_calculator_annotation

        if not self.forced:
            generated = input_ids[0, self.prompt_length:][-CALCULATOR_WINDOW:]
            value = complete_calculator_annotation(self.tokenizer.decode(generated, skip_special_tokens=True))
            if value is not None:
                self.forced = self.tokenizer.encode(f"{value}>>", add_special_tokens=False)
                self.calls += 1
        if not self.forced:
            return scores
        token = self.forced.pop(0)
        forced = scores.new_full(scores.shape, float("-inf"))
        forced[:, token] = 0.0
        return forced


def stream_generate(backend: Any, prompt: str, stops: tuple[str, ...], max_new_tokens: int,
                    calculator: bool = False, loop_stop: tuple[int, int] | None = None) -> Iterator[str]:
    """Greedy decoding in a worker thread, read back through transformers' TextIteratorStreamer;
    with `calculator`, the calculator writes the results of `<<expr=` annotations; with `loop_stop`
    (eval.repetition_stop), a looping answer ends as the evaluation's decoding loop ends it."""
    from transformers import LogitsProcessorList, StoppingCriteriaList, TextIteratorStreamer

    tokenizer = backend.tokenizer
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=STREAM_TIMEOUT_S)
    encoded = tokenizer(prompt, return_tensors="pt").to(backend.device)
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "temperature": None,
        "top_p": None,
        "top_k": None,
        "pad_token_id": tokenizer.pad_token_id,
        "streamer": streamer,
    }
    if stops:
        kwargs.update(stop_strings=list(stops), tokenizer=tokenizer)
    if calculator:
        kwargs["logits_processor"] = LogitsProcessorList([CalculatorForcing(tokenizer, encoded["input_ids"].shape[1])])
    if loop_stop:
        kwargs["stopping_criteria"] = StoppingCriteriaList([LoopStop(encoded["input_ids"].shape[1], loop_stop)])
    failure: list[BaseException] = []

    def work() -> None:
        try:
            backend.model.generate(**encoded, **kwargs)
        except BaseException as exc:  # reported below, in the caller's thread
            failure.append(exc)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    text = ""
    for piece in streamer:
        text += piece
        shown, stopped = cut_at_stop(text, stops)
        yield shown
        if stopped:
            break
    thread.join()
    if failure:
        raise MathtuneError(f"generation failed: {type(failure[0]).__name__}: {failure[0]}")


def answer_details(strategy: str, output: str, reference: str | None) -> dict[str, Any]:
    """The answer read from an output (the sandbox's, for programs) and, if known, whether it is right."""
    details: dict[str, Any] = {"strategy": strategy}
    prompt_strategy = get_strategy(strategy)
    (text,), results = prompt_strategy.answer_texts([output])
    if results:  # the model wrote a program; the sandbox ran it
        result = results[0]
        details["program"] = extract_program(output)
        details["sandbox"] = {
            "ok": result.ok,
            "answer": result.answer,
            "reason": result.reason,
            "stdout": result.stdout[-2000:],
            "seconds": round(result.seconds, 2),
        }
    details["extracted"] = extract_all(text)
    if reference:
        details["correct"] = score_all(text, reference)
    return details


def pool_from_run(run: Run) -> list[dict[str, Any]]:
    """Outputs of a run's evaluations (eval/*/predictions.jsonl), grouped by problem, for blind rating."""
    items: dict[str, dict[str, Any]] = {}
    for eval_dir in sorted((run.run_dir / "eval").glob("*")):
        for row in read_jsonl_tolerant(eval_dir / "predictions.jsonl"):
            item = items.setdefault(
                row["id"],
                {
                    "problem_id": row["id"],
                    "question": row["question"],
                    "reference_answer": row.get("reference_answer"),
                    "outputs": {},
                },
            )
            item["outputs"][f"{run.name}/{eval_dir.name}"] = row["output"]
    return list(items.values())


def draw_blind(
    pool: list[dict[str, Any]], rated: set[str], rng: random.Random, shown: int = 2
) -> dict[str, Any] | None:
    """A problem with up to `shown` outputs in random order, preferring outputs this rater has not rated."""
    from mathtune.app.ratings import item_id

    def unrated(item: dict[str, Any]) -> list[tuple[str, str]]:
        return [(m, o) for m, o in item["outputs"].items() if item_id(m, item["question"], o) not in rated]

    fresh = [item for item in pool if unrated(item)]
    if not fresh:
        return None
    item = rng.choice(fresh)
    outputs = unrated(item)
    rng.shuffle(outputs)
    return {
        "problem_id": item["problem_id"],
        "question": item["question"],
        "reference_answer": item.get("reference_answer"),
        "shown": [{"model": m, "output": o} for m, o in outputs[:shown]],
    }
