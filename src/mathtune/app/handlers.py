"""The app's event handlers: plain functions of the UI's values, testable without a browser.

Each handler turns a `MathtuneError` (bad input, a missing file) into `gr.Error`, which Gradio
shows as a message in the page instead of a stack trace.
"""

from __future__ import annotations

import functools
import inspect
import random
import re
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from mathtune.app.engine import Engine, answer_details, check_question, draw_blind
from mathtune.app.ratings import CRITERIA, Rating, RatingStore
from mathtune.errors import MathtuneError

NO_RUN = "(none: base model only)"
SLOTS = ("A", "B")  # blind outputs shown side by side
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Show a MathtuneError as a Gradio error message; works for plain and generator handlers."""
    if inspect.isgeneratorfunction(func):

        @functools.wraps(func)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from func(*args, **kwargs)
            except MathtuneError as exc:
                raise gr.Error(str(exc), print_exception=False) from None

        return gen_wrapper

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MathtuneError as exc:
            raise gr.Error(str(exc), print_exception=False) from None

    return wrapper


class Handlers:
    """`login`: the app runs behind Gradio's login (`--auth`); the rater is then the logged-in user and
    the name typed in the page is ignored (anyone could type anyone's name)."""

    def __init__(self, engine: Engine, store: RatingStore, seed: int | None = None, login: bool = False) -> None:
        self.engine, self.store, self.login = engine, store, login
        self.rng = random.Random(seed)
        self._rng_lock = threading.Lock()  # rating events run concurrently (ui.py); one draw at a time

    def rater(self, typed: str | None, request: gr.Request | None) -> str:
        """Who is rating: the logged-in user behind a login, else the name typed in the page."""
        if self.login:
            user = getattr(request, "username", None)
            if not user:
                raise MathtuneError("log in to rate: ratings are stored under the logged-in user")
            return str(user)
        typed = (typed or "").strip()
        if not typed:
            raise MathtuneError("enter your name as rater first (ratings are compared between raters)")
        return typed

    def whoami(self, request: gr.Request) -> Any:
        """On page load behind a login: show the logged-in user as the rater, not editable."""
        if not self.login:
            return gr.update()
        return gr.update(value=getattr(request, "username", None) or "", interactive=False)

    def run_choices(self) -> list[str]:
        return [NO_RUN, *self.engine.runs]

    def on_run_change(self, run_label: str) -> tuple[Any, Any]:
        """Choosing a run selects its base model and its prompt strategy."""
        run = self.engine.runs.get(run_label)
        if run is None:
            return gr.update(), gr.update()
        return gr.update(value=run.config.model.name), gr.update(value=run.config.prompt.strategy)

    @user_errors
    def draw_problem(self) -> tuple[str, dict[str, Any], str]:
        with self._rng_lock:
            seed = self.rng.randrange(2**32)
        problem = self.engine.random_problem(seed)
        return (
            problem.question,
            problem.to_dict(),
            f"GSM8K test problem {problem.id}; reference answer **{problem.answer}**",
        )

    @user_errors
    def solve(
        self,
        model: str,
        run_label: str,
        strategy: str,
        max_new_tokens: float,
        question: str,
        problem: dict[str, Any] | None,
        calculator: bool | None = None,
    ) -> Iterator[tuple[str, str, str, str]]:
        """Stream the base model's answer, then the tuned model's; finish each with its extracted answer.
        Both decode as the run was evaluated (its eval.calculator) unless the calculator switch says otherwise."""
        question = check_question(question)
        run = run_label if run_label and run_label != NO_RUN else None
        cfg = self.engine.config_for(model, run, strategy, int(max_new_tokens), calculator)
        reference = problem["solution"] if problem and problem.get("question", "").strip() == question else None
        texts = ["", ""]
        notes = ["_loading the model…_", "_waiting for the base model…_" if run else "_no run selected_"]
        yield _shown(texts, notes)
        sides = [(0, None)] + ([(1, run)] if run else [])
        for index, side_run in sides:
            notes[index] = "_generating…_"
            for partial in self.engine.stream(cfg, side_run, question):
                texts[index] = partial
                yield _shown(texts, notes)
            notes[index] = details_markdown(answer_details(strategy, texts[index], reference))
            yield _shown(texts, notes)
        labels = [f"{run}/base" if run else model, f"{run}/tuned"]
        answer = problem.get("answer") if reference and problem else None
        self.engine.add_live(question, {labels[i]: texts[i] for i, _ in sides}, answer)

    @user_errors
    def next_blind(self, request: gr.Request, rater: str) -> tuple[Any, ...]:
        """A problem and up to two outputs, model hidden and order random; rating inputs cleared.

        The item carries a fresh key: submitting it twice (a double click, a retry) stores it once."""
        rater = self.rater(rater, request)
        rated = self.store.rated_items(rater)
        with self._rng_lock:
            item = draw_blind(self.engine.pool, rated, self.rng)
        cleared = [None] * (len(SLOTS) * len(CRITERIA))
        if item is None:
            gr.Warning("Nothing left to rate: solve a problem in the first tab to add outputs.")
            return None, "", "", "", "No unrated outputs left.", *cleared
        item["key"] = uuid.uuid4().hex
        outputs = [printable(s["output"]) for s in item["shown"]] + [""] * (len(SLOTS) - len(item["shown"]))
        status = f"Problem {item['problem_id']}: rate each output on the four criteria (1 = poor, 5 = excellent)."
        return item, item["question"], *outputs, status, *cleared

    @user_errors
    def submit(self, request: gr.Request, rater: str, item: dict[str, Any] | None, *scores: Any) -> str:
        rater = self.rater(rater, request)
        if not item:
            raise MathtuneError("draw a problem to rate first ('Next problem')")
        ratings = []
        for slot, shown in zip(SLOTS, item["shown"], strict=False):
            values = scores[SLOTS.index(slot) * len(CRITERIA) :][: len(CRITERIA)]
            missing = [c for c, v in zip(CRITERIA, values, strict=True) if v is None]
            if missing:
                raise MathtuneError(f"output {slot}: rate {', '.join(missing)} too")
            ratings.append(
                Rating(
                    rater=rater,
                    problem_id=str(item["problem_id"]),
                    model=shown["model"],
                    question=item["question"],
                    output=shown["output"],
                    **{c: int(v) for c, v in zip(CRITERIA, values, strict=True)},
                )
            )
        keys = [f"{item['key']}/{slot}" if item.get("key") else None for slot in SLOTS]
        saved = self.store.add_all(list(zip(ratings, keys, strict=False)))  # one transaction: all or none
        if not any(new for _, new in saved):
            return f"Already saved: these {len(saved)} rating(s) from {rater} were stored before, not again."
        return f"Saved {len(ratings)} rating(s) from {rater}. Click 'Next problem' for another."

    @user_errors
    def export_csv(self) -> str:
        path = Path(tempfile.mkdtemp(prefix="mathtune-ratings-")) / "ratings.csv"
        return str(self.store.export_csv(path))

    @user_errors
    def summary(self) -> str:
        return summary_markdown(self.store.summary())


def printable(text: str) -> str:
    """Model output for display: control characters (a random model emits them) become U+FFFD."""
    return CONTROL.sub("\ufffd", text)


def _shown(texts: list[str], notes: list[str]) -> tuple[str, str, str, str]:
    return printable(texts[0]), printable(texts[1]), notes[0], notes[1]


def details_markdown(details: dict[str, Any]) -> str:
    lines = [
        f"**Answer** (strict-match): `{details['extracted']['strict-match']}` · flexible-extract: "
        f"`{details['extracted']['flexible-extract']}`"
    ]
    if "correct" in details:
        ok = details["correct"]["strict-match"] or details["correct"]["numeric-match"]
        lines.append("✅ matches the reference" if ok else "❌ does not match the reference")
    if "program" in details:
        code = details["program"]
        fence = "`" * max(3, _longest_backtick_run(code) + 1)
        box = details["sandbox"]
        lines += [
            f"**Program:**\n{fence}python\n{code}\n{fence}",
            f"**Sandbox:** {box['reason']}, answer `{box['answer']}` ({box['seconds']} s)",
        ]
    return "\n\n".join(lines)


def _longest_backtick_run(text: str) -> int:
    longest = run = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    return longest


def summary_markdown(summary: dict[str, Any]) -> str:
    if not summary["ratings"]:
        return "No ratings yet."
    lines = [
        f"{summary['ratings']} ratings from {summary['raters']} rater(s).",
        "",
        "| model | n | raters | " + " | ".join(CRITERIA) + " |",
        "|" + "---|" * (len(CRITERIA) + 3),
    ]
    for model, stats in summary["models"].items():
        lines.append(
            f"| {model} | {stats['n']} | {stats['raters']} | " + " | ".join(f"{stats[c]:.2f}" for c in CRITERIA) + " |"
        )
    lines += [
        "",
        "Agreement between raters (on outputs rated by two or more):",
        "",
        "| criterion | outputs | Krippendorff's α (interval) | mean pairwise quadratic κ |",
        "|---|---|---|---|",
    ]
    for criterion, agree in summary["agreement"].items():
        alpha, kappa = agree["krippendorff_alpha"], agree["mean_pairwise_qwk"]
        lines.append(
            f"| {criterion} | {agree['items_rated_by_2plus']} | "
            f"{'–' if alpha is None else f'{alpha:.3f}'} | {'–' if kappa is None else f'{kappa:.3f}'} |"
        )
    return "\n".join(lines)
