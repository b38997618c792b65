"""Self-training data (rejection-sampling fine-tuning, STaR, expert iteration): the model's own sampled
solutions of train problems, kept only where the answer check confirms them, mixed with the human ones.

What may enter the training data, and what never does:
- a sample whose answer is wrong (the evaluation's own score, numeric match by default) never;
- for the program strategy, a program the sandbox did not run to the right answer never (the score
  of a program is the sandbox's result; a sample without a sandbox record is not confirmed);
- a text solution whose last '#### N' line does not carry the reference answer never: it is what
  the model would learn to write;
- a repeat of a solution already kept for the same problem (after lower-casing and collapsing
  white space), the human solution included, never;
- a problem that shares a 13-word n-gram with a test question (data/contamination.py) never.
Every step is a pure function of its inputs, in the order of the problems and samples, so the same
samples give the same bytes (`write_rows`). Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mathtune.answers import numbers_equal, parse_number_text, parse_reference_answer
from mathtune.io import atomic_write_text

WRONG = "wrong answer"
UNCONFIRMED = "program not confirmed by the sandbox"
NO_ANSWER_LINE = "no '#### N' line with the right answer"
DUPLICATE = "duplicate of a kept solution"
TEST_OVERLAP = "problem shares a 13-gram with a test question"
OVER_CAP = "beyond the per-problem cap"


@dataclass
class FilterReport:
    problems: int = 0
    samples: int = 0
    kept: int = 0
    problems_with_a_kept_sample: int = 0
    dropped: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {"problems": self.problems, "samples": self.samples, "kept": self.kept,
                "problems_with_a_kept_sample": self.problems_with_a_kept_sample,
                "dropped": dict(sorted(self.dropped.items()))}


def normalized(text: str) -> str:
    """The form duplicates are found in: lower case, white space collapsed."""
    return " ".join(text.lower().split())


def _answer_line_right(solution: str, reference: str) -> bool:
    stated = parse_reference_answer(solution)
    value = parse_number_text(stated) if stated is not None else None
    expected = parse_number_text(reference)
    return value is not None and expected is not None and numbers_equal(float(value), float(expected))


def _recalled(solution: str, programs: bool) -> set[str]:
    """The human solution as a sample would repeat it (programs: also the program converted from it)."""
    forms = {normalized(solution)}
    if programs:
        from mathtune.data.programs import solution_to_program

        program = solution_to_program(solution)
        forms |= {normalized(program)} if program else set()
    return forms


def verified_solutions(rows: Sequence[dict[str, Any]], *, programs: Callable[[str], str] | None = None,
                       score: str = "numeric-match", human: dict[str, str] | None = None,
                       max_per_problem: int | None = None) -> tuple[list[dict[str, Any]], FilterReport]:
    """The distinct right samples of `rows` (the rows of a `mathtune sample` samples.jsonl) as train
    rows {id, question, answer, source, source_id[, program]}. `programs`: for the program strategy,
    its extractor of the program from an output (`prompts.extract_program`); confirmation by the
    sandbox is then required, the row's answer is the reference solution and its program the sampled
    one. `human`: problem id -> human solution, never repeated by a kept one."""
    report, kept = FilterReport(), []
    for row in rows:
        report.problems += 1
        seen = _recalled(human[row["id"]], programs is not None) if human and row["id"] in human else set()
        taken = 0
        for index, sample in enumerate(row["samples"]):
            report.samples += 1
            if not sample["correct"].get(score):
                report.dropped[WRONG] += 1
                continue
            sandbox = sample.get("sandbox") or {}
            if programs and not (sandbox.get("ok") and sandbox.get("answer") is not None
                                 and _answer_line_right(f"#### {sandbox['answer']}", row["reference_answer"])):
                report.dropped[UNCONFIRMED] += 1
                continue
            text = programs(sample["output"]).strip() if programs else sample["output"].strip()
            if not programs and not _answer_line_right(text, row["reference_answer"]):
                report.dropped[NO_ANSWER_LINE] += 1
                continue
            if normalized(text) in seen:
                report.dropped[DUPLICATE] += 1
                continue
            if max_per_problem is not None and taken >= max_per_problem:
                report.dropped[OVER_CAP] += 1
                continue
            seen.add(normalized(text))
            taken += 1
            entry = {"id": f"{row['id']}~self{index}", "question": row["question"], "source": "self",
                     "source_id": row["id"]}
            if programs:  # the answer field keeps '#### N' for the loaders; the program is the target
                entry |= {"answer": (human or {}).get(row["id"], f"#### {row['reference_answer']}"), "program": text}
            else:
                entry["answer"] = text
            kept.append(entry)
        report.kept += taken
        report.problems_with_a_kept_sample += taken > 0
    return kept, report


def drop_test_problems(rows: list[dict[str, Any]], test_questions: Sequence[tuple[str, str]],
                       report: FilterReport | None = None) -> list[dict[str, Any]]:
    """`rows` without those whose question repeats or shares a 13-word n-gram with a test question
    (the contamination check `mathtune eval` reports; `test_questions` are (id, question) pairs)."""
    from mathtune.data.contamination import contamination_report

    flagged = contamination_report(list(test_questions), [(row["id"], row["question"]) for row in rows],
                                   max_listed=None)
    dropped = {entry["eval_id"] for entry in flagged["examples"]}  # a repeated question shares every n-gram
    kept = [row for row in rows if row["id"] not in dropped]
    if report is not None and dropped:
        report.dropped[TEST_OVERLAP] += len(dropped)
        own = [row for row in kept if row.get("source") == "self"]
        report.kept, report.problems_with_a_kept_sample = len(own), len({row["source_id"] for row in own})
    return kept


def human_rows(problems: Sequence[Any]) -> list[dict[str, Any]]:
    """The human solutions as train rows (`Problem`s of the train split)."""
    return [{"id": p.id, "question": p.question, "answer": p.solution, "source": "human", "source_id": p.id}
            for p in problems]


def augmented_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a `mathtune augment` JSONL (its own original rows, if it wrote them, are left out:
    the human solutions are their own source in the mix)."""
    from mathtune.data.records import read_jsonl

    rows = []
    for row in read_jsonl(path):
        if row.get("id") == row.get("source_id"):
            continue
        rows.append({"id": str(row["id"]), "question": row["question"], "answer": row["answer"],
                     "source": "augmented", "source_id": str(row.get("source_id", row["id"])),
                     **({"program": row["program"]} if row.get("program") else {})})
    return rows


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> str:
    """Write the rows as JSONL (sorted keys, one row a line) and return the sha256 of its bytes. A file
    already holding exactly these bytes is left untouched (its mtime too)."""
    text = "".join(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n" for row in rows)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if not (path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == digest):
        atomic_write_text(path, text)
    return digest
