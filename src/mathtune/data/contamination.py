"""Train/test contamination: word n-gram overlap between training and evaluation questions.

The GPT-3 paper's check (Brown et al., 2020, appendix C): an evaluation question is flagged when it
shares any 13-word sequence with a training question, after lower-casing and keeping only word
characters. A question shorter than n words is flagged only if its whole word sequence appears
inside a training question. Pure functions; nothing here imports torch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

DEFAULT_N = 13
MAX_LISTED = 20  # flagged ids written into reports; the count covers all of them
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(text: str, n: int = DEFAULT_N) -> set[tuple[str, ...]]:
    """Every run of `n` consecutive words; a shorter text is one gram of all its words."""
    tokens = words(text)
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def _containing(gram: tuple[str, ...], train_texts: Iterable[tuple[str, str]]) -> str | None:
    needle = " " + " ".join(gram) + " "
    return next((train_id for train_id, text in train_texts if needle in text), None)


def contamination_report(train: Sequence[tuple[str, str]], evaluation: Sequence[tuple[str, str]],
                         n: int = DEFAULT_N, max_listed: int | None = MAX_LISTED) -> dict[str, Any]:
    """Which evaluation questions share an n-gram with a training question.

    `train` and `evaluation` are (id, question) pairs. Returns counts, the flagged fraction and up to
    MAX_LISTED flagged evaluation ids with one training id each shares a gram with.
    """
    index: dict[tuple[str, ...], str] = {}
    for train_id, question in train:
        for gram in ngrams(question, n):
            index.setdefault(gram, train_id)
    joined = [(train_id, " " + " ".join(words(q)) + " ") for train_id, q in train]
    flagged: list[dict[str, str]] = []
    for eval_id, question in evaluation:
        grams = ngrams(question, n)
        hit = next((index[g] for g in grams if g in index), None)
        if hit is None and grams and len(words(question)) < n:  # a short question inside a training one
            hit = _containing(next(iter(grams)), joined)
        if hit is not None:
            flagged.append({"eval_id": eval_id, "train_id": hit})
    total = len(evaluation)
    return {"n": n, "train_questions": len(train), "eval_questions": total, "contaminated": len(flagged),
            "fraction": len(flagged) / total if total else 0.0, "examples": flagged[:max_listed]}


def problems_report(train_problems: Sequence[Any], eval_problems: Sequence[Any], n: int = DEFAULT_N) -> dict[str, Any]:
    """`contamination_report` over `Problem` rows (anything with `.id` and `.question`)."""
    return contamination_report([(p.id, p.question) for p in train_problems],
                                [(p.id, p.question) for p in eval_problems], n)
