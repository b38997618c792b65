"""Every benchmark mathtune trains and tests on, in one table: name, loader, fields, answer kind, split
sizes, hub id. `config.py` (the `data.dataset` choices), the CLI help, `benchmark_name`, the hub
table of `data/hub_sets.py` and `load_split` all read it, as lm-evaluation-harness reads its task
YAMLs. A new benchmark is one `Benchmark` entry (here, or `register_benchmark` at run time) plus,
if its rows have another shape, one loader function `(data_cfg, data_dir, split) -> list[Problem]`.

Answer kinds (`Problem.kind`) pick the scorer in `evaluate/extraction.py`: number (lm-eval's
strict/flexible filters, numeric-match, math-verify), latex (math-verify) and choice (the letter).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mathtune.data.row import Problem
from mathtune.errors import MathtuneError

Loader = Callable[[Any, "Path | None", str], list[Problem]]
# A loader is a function or "module:function" (the built-in ones: their modules import this table).
ANSWER_KINDS = ("number", "latex", "choice")


@dataclass(frozen=True)
class Benchmark:
    name: str
    description: str  # one line, shown in the CLI help and the config's field description
    loader: Loader | str  # (data section, data dir or None, split) -> every problem of that split
    answer_kind: str = "number"  # how answers are scored (see the module docstring)
    fields: tuple[str, ...] = ("question", "answer")  # the row fields the loader reads
    split_sizes: dict[str, int] = field(default_factory=dict)  # rows per split, as shipped (docs, checks)
    hub_id: str | None = None  # where rows come from without a local copy
    hub_config: str | None = None
    # The folder name of its evaluations (eval/<name>/); None: the benchmark's name.
    folder: Callable[[Any], str] | None = None

    def __post_init__(self) -> None:
        if self.answer_kind not in ANSWER_KINDS:
            raise ValueError(f"benchmark {self.name}: answer_kind must be one of {ANSWER_KINDS}")

    def load(self, data_cfg: Any, data_dir: Path | None, split: str) -> list[Problem]:
        loader = self.loader
        if isinstance(loader, str):
            module, function = loader.split(":")
            loader = getattr(importlib.import_module(module), function)
        return loader(data_cfg, data_dir, split)


BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    """Add (or replace) a benchmark; `data.dataset` accepts its name from then on."""
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


for _entry in (
    Benchmark("gsm8k", "GSM8K grade-school word problems ('#### N' solutions; data.subset main or socratic)",
              loader="mathtune.data.problems:load_gsm8k", answer_kind="number", fields=("question", "answer"),
              split_sizes={"train": 7473, "test": 1319}, hub_id="openai/gsm8k", hub_config="main",
              folder=lambda d: "gsm8k-socratic" if d.subset == "socratic" else "gsm8k"),
    Benchmark("svamp", "SVAMP, one file carved into a seeded 700 train / 300 test (data.svamp_test)",
              loader="mathtune.data.problems:load_svamp", answer_kind="number",
              fields=("Body", "Question", "Equation", "Answer"), split_sizes={"train": 700, "test": 300},
              hub_id="ChilleD/SVAMP", folder=lambda d: "svamp-all" if d.svamp_test == "all" else "svamp"),
    Benchmark("math", "MATH competition problems, answers checked by math-verify",
              loader="mathtune.data.hub_sets:load_math", answer_kind="latex", fields=("problem", "solution"),
              split_sizes={"train": 7500, "test": 5000}, hub_id="hendrycks/competition_math"),
    Benchmark("arc-challenge", "ARC-Challenge multiple choice, checked by the choice's letter",
              loader="mathtune.data.hub_sets:load_arc_challenge", answer_kind="choice",
              fields=("id", "question", "choices", "answerKey"), split_sizes={"train": 1119, "test": 1172},
              hub_id="allenai/ai2_arc", hub_config="ARC-Challenge"),
    Benchmark("jsonl", "any JSONL/CSV file of GSM8K-shaped rows (data.train_file, data.test_file, "
              "data.question_field, data.answer_field)", loader="mathtune.data.problems:load_jsonl",
              folder=lambda d: f"jsonl-{Path(d.test_file or 'test').stem}"),
):
    register_benchmark(_entry)


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise MathtuneError(f"unknown benchmark '{name}' (choose from {', '.join(BENCHMARKS)})")
    return BENCHMARKS[name]


def benchmark_names() -> tuple[str, ...]:
    return tuple(BENCHMARKS)


def benchmarks_help() -> str:
    """'gsm8k, svamp, ...': the names, for CLI help texts."""
    return ", ".join(BENCHMARKS)
