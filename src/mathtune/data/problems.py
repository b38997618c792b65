"""Math word problems from GSM8K, SVAMP, MATH, ARC-Challenge or any JSONL/CSV file, as `Problem` rows
(which loader serves which `data.dataset`: the table in `data/benchmarks.py`).

Local copies come first (`data.data_dir` or `MATHTUNE_DATA_DIR`; `data.train_file`/`test_file` for
jsonl, MATH and ARC); without one, GSM8K comes from the hub (`openai/gsm8k`), SVAMP from
`ChilleD/SVAMP`, MATH and ARC as `data/hub_sets.py` says.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mathtune.answers import ANSWER_MARK, format_number, parse_number_text, parse_reference_answer
from mathtune.data.records import read_json_list, read_records, row_locator
from mathtune.data.row import Problem, hub_rows
from mathtune.errors import MathtuneError

GET_DATA = ("point --data-dir (or MATHTUNE_DATA_DIR) at a folder holding gsm8k/train.jsonl and "
            "gsm8k/test.jsonl, or unset both to download openai/gsm8k from the hub")


def problems_from_rows(
    rows: list[dict[str, Any]], source: str, question_field: str = "question", answer_field: str = "answer",
    where: Callable[[int], str] | None = None,
) -> list[Problem]:
    """Problems from GSM8K-shaped rows. Errors name `where(index)`: by default `path:line` for rows
    read from a file (`Records`), `source row N` for hub rows."""
    where = where or row_locator(rows, source)
    return [_problem(row, index, where, question_field, answer_field) for index, row in enumerate(rows)]


def _problem(row: dict[str, Any], index: int, where: Callable[[int], str], question_field: str,
             answer_field: str) -> Problem:
    missing = [f for f in (question_field, answer_field) if f not in row]
    if missing:
        raise MathtuneError(f"{where(index)}: missing field(s) {', '.join(missing)}")
    question, solution = row[question_field], row[answer_field]
    if not isinstance(question, str) or not question.strip():
        raise MathtuneError(f"{where(index)}: field '{question_field}' must be non-empty text")
    solution = str(solution) if isinstance(solution, int | float) else solution
    if not isinstance(solution, str):
        raise MathtuneError(f"{where(index)}: field '{answer_field}' must be text")
    if ANSWER_MARK not in solution and parse_number_text(solution) is not None:
        solution = f"{ANSWER_MARK} {solution.strip()}"  # bare-number answers (SVAMP-style files)
    answer = parse_reference_answer(solution)
    if answer is None:
        raise MathtuneError(f"{where(index)}: no numeric answer after '####' in field '{answer_field}'")
    program = row.get("program")
    if program is not None and (not isinstance(program, str) or not program.strip()):
        raise MathtuneError(f"{where(index)}: field 'program' must be non-empty text (or absent)")
    return Problem(id=str(row.get("id", index)), question=question, solution=solution, answer=answer,
                   program=program)


def _svamp_problems(rows: list[dict[str, Any]], source: str) -> list[Problem]:
    where, problems = row_locator(rows, source), []
    for index, row in enumerate(rows):
        try:
            question = f"{row['Body'].strip()} {row['Question'].strip()}".strip()
            answer = format_number(float(row["Answer"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MathtuneError(f"{where(index)}: bad or missing SVAMP field ({exc})") from None
        equation = str(row.get("Equation", "")).strip()
        solution = f"{equation} = {answer}\n{ANSWER_MARK} {answer}" if equation else f"{ANSWER_MARK} {answer}"
        problems.append(Problem(id=str(row.get("ID", index)), question=question, solution=solution, answer=answer))
    return problems


def _gsm8k_file(data_dir: Path, subset: str, split: str) -> Path:
    name = f"{split}_socratic.jsonl" if subset == "socratic" else f"{split}.jsonl"
    return data_dir / "gsm8k" / name


def load_split(data_cfg: Any, data_dir: Path | None, split: str) -> list[Problem]:
    """All problems of one split ('train' or 'test') for the configured dataset (its loader in
    `data/benchmarks.py`)."""
    from mathtune.data.benchmarks import get_benchmark

    return get_benchmark(data_cfg.dataset).load(data_cfg, data_dir, split)


class LoadedSplits:
    """The splits one command has read, so each is read once: `preflight` fills it and the recipe
    passes it down (training, contamination checks, few-shot pools, fingerprints). Keyed by the data
    section too, as a run tested on another benchmark reads two. A split that failed to load fails
    again with the same error without being read again."""

    def __init__(self) -> None:
        self._splits: dict[tuple[str, str, str], list[Problem] | MathtuneError] = {}

    def get(self, data_cfg: Any, data_dir: Path | None, split: str) -> list[Problem]:
        key = (data_cfg.model_dump_json(), str(data_dir), split)
        if key not in self._splits:
            try:
                self._splits[key] = load_split(data_cfg, data_dir, split)
            except MathtuneError as exc:
                self._splits[key] = exc
        loaded = self._splits[key]
        if isinstance(loaded, MathtuneError):
            raise MathtuneError(str(loaded))
        return loaded

    def of(self, cfg: Any, split: str) -> list[Problem]:
        """`split` of a run config's data section."""
        return self.get(cfg.data, cfg.resolved_data_dir(), split)


def load_jsonl(data_cfg: Any, data_dir: Path | None, split: str) -> list[Problem]:
    path = data_cfg.train_file if split == "train" else data_cfg.test_file
    if not path:
        raise MathtuneError(f"data.dataset=jsonl needs data.{split}_file")
    rows = read_records(path)
    return problems_from_rows(rows, str(path), data_cfg.question_field, data_cfg.answer_field)


def load_svamp(data_cfg: Any, data_dir: Path | None, split: str) -> list[Problem]:
    return _svamp_split(_load_svamp(data_dir), split, data_cfg.svamp_test)


def load_gsm8k(data_cfg: Any, data_dir: Path | None, split: str) -> list[Problem]:
    local = _gsm8k_file(data_dir, data_cfg.subset, split) if data_dir else None
    if local is not None and local.is_file():
        return problems_from_rows(read_records(local), str(local))
    if local is not None and data_dir.exists() and not local.parent.exists():
        raise MathtuneError(f"no gsm8k/ folder in data dir {data_dir}; expected {local}; {GET_DATA}")
    if local is not None and not data_dir.exists():
        raise MathtuneError(f"data dir {data_dir} does not exist (looked for {local}); {GET_DATA}")
    if local is not None:
        raise MathtuneError(f"GSM8K file missing: {local}; {GET_DATA}")
    return problems_from_rows(hub_rows("openai/gsm8k", data_cfg.subset, split), f"openai/gsm8k {split}")


SVAMP_TEST_FRACTION = 0.3  # ChilleD/SVAMP's split: 300 of the 1,000 problems test, 700 train
SVAMP_SPLIT_SEED = 0


def _load_svamp(data_dir: Path | None) -> list[Problem]:
    """All 1,000 SVAMP problems: the local `svamp/SVAMP.json`, else both hub splits."""
    local = data_dir / "svamp" / "SVAMP.json" if data_dir else None
    if local is not None and local.is_file():
        return _svamp_problems(read_json_list(local), str(local))
    if local is not None:
        raise MathtuneError(f"SVAMP file missing: {local}")
    rows = hub_rows("ChilleD/SVAMP", None, "train") + hub_rows("ChilleD/SVAMP", None, "test")
    return _svamp_problems(rows, "ChilleD/SVAMP")


def _svamp_split(problems: list[Problem], split: str, test: str) -> list[Problem]:
    """SVAMP ships as one file, so train and test are carved from it: a seeded 700/300 split by
    problem id (the hub's sizes; the same on every machine), or with `test: all` every problem is
    test and train (a model trained elsewhere tested on all 1,000; training on it is refused as
    training on the test set, `check_train_test_disjoint`)."""
    if test == "all":
        return problems
    ordered = sorted(problems, key=lambda p: p.id)
    size = max(1, round(SVAMP_TEST_FRACTION * len(ordered)))
    test_ids = {p.id for p in random.Random(SVAMP_SPLIT_SEED).sample(ordered, size)}
    return [p for p in problems if (p.id in test_ids) == (split == "test")]


def check_train_test_disjoint(train: list[Problem], test: list[Problem], allowed: bool = False) -> None:
    """Refuse to train on problems that are also test problems (same question once lower-cased and
    reduced to its words): every score on them would measure memory, not math."""
    def key(question: str) -> str:
        return " ".join(re.findall(r"\w+", question.lower()))

    test_keys = {key(p.question): p.id for p in test}
    shared = [(p.id, test_keys[key(p.question)]) for p in train if key(p.question) in test_keys]
    if shared and not allowed:
        train_id, test_id = shared[0]
        raise MathtuneError(
            f"{len(shared)} train problem(s) are also test problems (first: train {train_id} = test {test_id}); "
            f"train on another split, or set data.allow_test_overlap=true to do it knowingly")


def benchmark_name(data_cfg: Any) -> str:
    """A folder name for the benchmark a data section tests on: gsm8k, gsm8k-socratic, svamp,
    svamp-all, math, arc-challenge, or jsonl-<test file's stem> (each benchmark's `folder`)."""
    from mathtune.data.benchmarks import get_benchmark

    benchmark = get_benchmark(data_cfg.dataset)
    return benchmark.folder(data_cfg) if benchmark.folder is not None else benchmark.name


def sample_problems(problems: list[Problem], count: int | None, seed: int) -> list[Problem]:
    """`count` problems drawn without replacement with a fixed seed; order is the draw order."""
    if count is None or count >= len(problems):
        return list(problems)
    return random.Random(seed).sample(problems, count)


def split_train_dev(problems: list[Problem], dev_size: int, seed: int) -> tuple[list[Problem], list[Problem]]:
    """Carve a dev slice from the train split (never the test split) for accuracy during training."""
    shuffled = random.Random(seed).sample(problems, len(problems))
    return shuffled[dev_size:], shuffled[:dev_size]
