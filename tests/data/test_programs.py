"""GSM8K solutions become straight-line programs that compute the reference answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mathtune.data.programs import (
    ConversionReport,
    check_program,
    convert_solutions,
    reference_answer,
    solution_to_program,
)
from mathtune.sandbox import SandboxLimits, run_programs

GSM8K_TRAIN = Path("/work/shared/datasets/gsm8k/train.jsonl")
NATALIA = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
    "#### 72"
)


def _gsm8k_rows(limit: int) -> list[tuple[str, str]]:
    if not GSM8K_TRAIN.exists():
        pytest.skip("GSM8K train split not available")
    rows = []
    with GSM8K_TRAIN.open() as f:
        for _, line in zip(range(limit), f, strict=False):
            solution = json.loads(line)["answer"]
            rows.append((solution, reference_answer(solution) or ""))
    return rows


def test_solution_to_program() -> None:
    assert solution_to_program(NATALIA) == (
        "# Natalia sold 48/2 = 24 clips in May.\n"
        "v1 = 48 / 2\n"
        "# Natalia sold 48+24 = 72 clips altogether in April and May.\n"
        "v2 = 48 + 24\n"
        "answer = v2\n"
    )


def test_unannotated_final_step_is_recovered() -> None:
    solution = "Each costs 2*5=<<2*5=10>>10 dollars.\nShe bought 4 tops so 20/4 = $5\n#### 5"
    program = solution_to_program(solution)
    assert program is not None and "v2 = 20 / 4" in program
    assert check_program(program, "5")


def test_prose_equations_that_do_not_evaluate_are_ignored() -> None:
    program = solution_to_program("He has 3+4=<<3+4=7>>7 toys.\nSo (2 + 5 = 7 (unbalanced)\n#### 7")
    assert program is not None
    assert [line for line in program.splitlines() if not line.startswith("#")] == [
        "v1 = 3 + 4",
        "answer = v1",
    ]


def test_no_annotation() -> None:
    assert solution_to_program("She has three apples.\n#### 3") is None


def test_reference_answer() -> None:
    assert reference_answer(NATALIA) == "72"
    assert reference_answer("so 1,200 dollars\n#### 1,200") == "1,200"
    assert reference_answer("no marker") is None


def test_check_program() -> None:
    program = solution_to_program(NATALIA)
    assert program is not None
    assert check_program(program, "72")
    assert check_program(program, "72.0")
    assert not check_program(program, "73")
    assert not check_program(program, "seventy-two")
    assert check_program("a = 1,000 * 2\nanswer = a\n", "2,000")


@pytest.mark.parametrize(
    "program",
    [
        "import os\nanswer = 1\n",
        "answer = __import__('os').system('touch /tmp/mathtune-pwned') or 72\n",
        "v1 = 72\nanswer = v2\n",  # names must be assigned before use
        "v1 = 72\n",  # no answer
        "def f():\n    return 72\nanswer = f()\n",
        "answer = 9**9**9\n",
    ],
)
def test_check_program_never_executes(program: str) -> None:
    assert not check_program(program, "72")
    assert not Path("/tmp/mathtune-pwned").exists()


def test_convert_solutions_report() -> None:
    rows = [(NATALIA, "72"), ("No arithmetic here.\n#### 3", "3"), (NATALIA, "100")]
    programs, report = convert_solutions(rows)
    assert programs[0] is not None and programs[1] is None and programs[2] is None
    assert report == ConversionReport(total=3, converted=1, dropped_no_annotation=1, dropped_mismatch=1)
    assert report.rate == pytest.approx(1 / 3)
    assert ConversionReport().rate == 0.0


def test_gsm8k_conversion_rate() -> None:
    programs, report = convert_solutions(_gsm8k_rows(500))
    assert report.total == 500
    assert report.converted + report.dropped_no_annotation + report.dropped_mismatch == report.total
    assert report.rate > 0.8, report  # measured: 479 / 500 = 95.8%
    assert sum(p is not None for p in programs) == report.converted


def test_converted_programs_run_in_the_sandbox() -> None:
    rows = _gsm8k_rows(30)
    programs, _ = convert_solutions(rows)
    chosen = [(p, gold) for p, (_, gold) in zip(programs, rows, strict=True) if p is not None][:6]
    results = run_programs([p for p, _ in chosen], SandboxLimits(cpu_seconds=1, wall_seconds=5))
    for result, (_, gold) in zip(results, chosen, strict=True):
        assert result.ok, result
        assert float(result.answer or "nan") == pytest.approx(float(gold.replace(",", "")))
