"""One math problem, the row every loader yields, and rows from the Hugging Face hub."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from mathtune.errors import MathtuneError
from mathtune.hub import hub_unreachable


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    solution: str  # full reference solution, ending in "#### N"
    answer: str  # the number after ####, commas removed (MATH: LaTeX; ARC: a letter)
    # How the answer is checked (evaluate/extraction.py): a number, a LaTeX expression (MATH, by
    # math-verify) or a multiple-choice letter (ARC).
    kind: Literal["number", "latex", "choice"] = "number"
    # A program target already verified by whoever wrote the row (a JSONL row's `program` field:
    # `mathtune augment` checks it computes the answer, `mathtune improve` keeps only sandbox-confirmed
    # ones); the program strategy trains on it instead of converting `solution`.
    program: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def hub_rows(path: str, name: str | None, split: str) -> list[dict[str, Any]]:
    hub_unreachable()  # offline: datasets then reads its cache or fails at once, without 30 s of retries
    try:
        from datasets import load_dataset

        return list(load_dataset(path, name, split=split))
    except Exception as exc:  # the hub fails in many ways offline; all mean "no data here"
        raise MathtuneError(
            f"could not load {path} from the hub ({type(exc).__name__}); set MATHTUNE_DATA_DIR or "
            f"--data-dir to a folder holding gsm8k/train.jsonl and gsm8k/test.jsonl"
        ) from None
