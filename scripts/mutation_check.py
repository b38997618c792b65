"""Mutation check: plant curated one-line bugs in a copy of the checkout, one at a time, and check that
the tests meant to guard each one fail (the mutant is "killed").

    python3 scripts/mutation_check.py                 # every mutant
    python3 scripts/mutation_check.py -k calculator   # those whose name contains 'calculator' (-k repeatable)
    python3 scripts/mutation_check.py --list          # names, files and tests, nothing run

The checkout is never edited: src/, tests/ and what the tests read are copied once to a temporary
directory, each mutant is written into that copy (and restored after), and pytest runs there with
PYTHONPATH=<copy>/src, so in-process imports and subprocesses alike see the mutant. Only the mutant's
own test files run (-x: the first failure is enough), after a baseline run of each test set on the
unmutated copy (a kill counts only if those tests pass without the mutant).

A mutant's original snippet must occur exactly once in its file; one that is missing or ambiguous is
reported STALE (the code was rewritten: update the mutant, do not drop it) and makes the check fail,
as does any surviving mutant. Exit code: 0 when every mutant is killed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("src", "tests", "benchmarks", "scripts", "pyproject.toml")  # what the tests import or read


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to src/mathtune
    original: str  # must occur exactly once in the file
    replacement: str
    tests: tuple[str, ...]  # pytest paths (node ids allowed), relative to the checkout
    named_in_issue: bool = False  # one of the four bugs issue #41 names: must never survive


DECODING_TESTS = ("tests/evaluate/test_decoding_guards.py", "tests/evaluate/test_continuous_batching.py")
CALCULATOR_TESTS = ("tests/evaluate/test_decoding_guards.py::test_the_calculator_forces_results_into_the_rows_that_"
                    "ask_and_nowhere_else", "tests/evaluate/test_calculator.py")

AGREEMENT_TESTS = ("tests/evaluate/test_agreement.py::test_our_scores_equal_lm_evals_filters_and_metric_on_crafted_"
                   "outputs",)

MUTANTS: list[Mutant] = [
    # ---- decoding (evaluate/decoding.py) ------------------------------------------------------------
    # The decoding loop is being rewritten (continuous batching, #35): when these go STALE, write the
    # same bugs into the new code. The guards (tests/evaluate/test_decoding_guards.py) test public
    # behaviour only, so they carry over unchanged.
    Mutant("decoding: decode-step positions ignore left padding", "evaluate/decoding.py",
           "        self.position = self.position + 1\n",
           "        self.position = torch.full_like(self.position, self.mask.shape[1] - 1)\n",
           DECODING_TESTS, named_in_issue=True),
    # (Prefill positions counted from the padded edge instead are an equivalent mutant for rotary
    # models: every row's positions shift by a constant, which RoPE attention cannot see.)
    Mutant("decoding: padded prefill attends to the padding", "evaluate/decoding.py",
           "    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=position,\n"
           "                   past_key_values=cache, use_cache=True, logits_to_keep=1)",
           "    logits = model(input_ids=input_ids, attention_mask=torch.ones_like(mask), position_ids=position,\n"
           "                   past_key_values=cache, use_cache=True, logits_to_keep=1)",
           DECODING_TESTS),
    Mutant("decoding: calculator tokens never fed to the model", "evaluate/decoding.py",
           "    token = row.forced.pop(0) if row.forced else chosen\n",
           "    token = chosen\n",
           DECODING_TESTS, named_in_issue=True),
    Mutant("decoding: calculator applied to every row", "evaluate/decoding.py",
           "    if row.calculator and not row.forced:\n",
           "    if not row.forced:\n",
           DECODING_TESTS),
    Mutant("decoding: calls counted per step, not per annotation", "evaluate/decoding.py",
           "        row.calls += bool(row.forced)\n",
           "        row.calls += 1\n",
           DECODING_TESTS),
    Mutant("decoding: a finished row's cache row is not dropped", "evaluate/decoding.py",
           "            self.mask, self.position, self.logits = self.mask[kept], self.position[kept], "
           "self.logits[kept]\n",
           "            self.mask, self.position, self.logits = (t[: len(keep)] for t in (self.mask, self.position,"
           " self.logits))\n",
           DECODING_TESTS),
    Mutant("decoding: a joining prompt's cache padded on the wrong side", "evaluate/decoding.py",
           "    return torch.nn.functional.pad(t, (0, 0, width - t.shape[-2], 0))\n",
           "    return torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[-2]))\n",
           DECODING_TESTS),
    Mutant("decoding: a joining prompt's padding not masked", "evaluate/decoding.py",
           "        mask = torch.cat([_pad_left(self.mask, width), _pad_left(joining.mask, width)])\n",
           "        mask = torch.cat([_pad_left(self.mask, width), torch.ones_like(_pad_left(joining.mask, width))])\n",
           DECODING_TESTS),
    Mutant("decoding: columns some row still uses are trimmed", "evaluate/decoding.py",
           "        first = int(self.mask.any(dim=0).long().argmax())",
           "        first = int(self.mask.all(dim=0).long().argmax())",
           DECODING_TESTS),
    Mutant("decoding: stop strings ignored", "evaluate/decoding.py",
           "    if any(s and s in tail for s in row.stop):\n",
           "    if False:\n",
           DECODING_TESTS),
    Mutant("decoding: the cap is off by one", "evaluate/decoding.py",
           "    if len(row.tokens) >= row.max_new_tokens:\n",
           "    if len(row.tokens) > row.max_new_tokens:\n",
           DECODING_TESTS),
    Mutant("decoding: the repetition stop fires after one copy too few", "evaluate/decoding.py",
           "        span = period * max(repeats, -(-min_tokens // period))",
           "        span = period * max(repeats - 1, -(-min_tokens // period))",
           DECODING_TESTS),
    Mutant("int8 decode: large calls (prefill, batches) use the int8 weights too", "speedups/int8_decode.py",
           "        if rows > MAX_ROWS or x.device.type != \"cpu\":\n",
           "        if x.device.type != \"cpu\":\n",
           ("tests/speedups/test_int8_decode.py",)),
    Mutant("decoding: per-row seeds ignored (one stream per batch)", "evaluate/decoding.py",
           "    if sample and row_seeds is not None:\n",
           "    if False:\n",
           DECODING_TESTS),
    Mutant("decoding: sampling is greedy", "evaluate/decoding.py",
           "    if not sample:\n        return logits.argmax(dim=-1)\n",
           "    if True:\n        return logits.argmax(dim=-1)\n",
           DECODING_TESTS),
    # ---- end of the decoding block --------------------------------------------------------------------
    # ---- calculator and arithmetic ----
    Mutant("calculator: an annotation closed too early is completed", "evaluate/calculator.py",
           '_OPEN_ANNOTATION = re.compile(r"<<([^<>=]*)=([-.]?)$")',
           '_OPEN_ANNOTATION = re.compile(r"<<([^<>=]*)=([-.]?)")',
           CALCULATOR_TESTS),
    Mutant("calculator: the sign the '=-' token wrote is written again", "evaluate/calculator.py",
           "    return value[len(written):] if value.startswith(written) else None",
           "    return value",
           CALCULATOR_TESTS),
    Mutant("arithmetic: results rounded to integers", "arithmetic.py",
           "    if rounded.is_integer():\n",
           "    if True:\n",
           CALCULATOR_TESTS),
    Mutant("calculator: asked of a seq2seq model, silently ignored", "recipes/checks.py",
           "    if cfg.eval.calculator and seq2seq and cfg.eval.split in splits:\n",
           "    if False:\n",
           ("tests/reliability/test_bad_input.py::test_the_calculator_on_a_seq2seq_model_is_refused_in_one_line",)),
    # ---- `mathtune run` on more benchmarks (eval.also) ----
    Mutant("run: an eval.also benchmark tested on the run's own data", "config.py",
           "                data = DataConfig.model_validate({**self.data.model_dump(), **entry.data})\n",
           "                data = DataConfig.model_validate(self.data.model_dump())\n",
           ("tests/test_pipeline.py::test_run_also_tests_another_benchmark_with_the_models_loaded_once",)),
    Mutant("run: every benchmark's comparison made of the run's own benchmark", "recipes/run.py",
           "            comparison = compare_runs([root / \"base\", root / \"tuned\"], [\"base\", \"tuned\"])\n",
           "            comparison = compare_runs([run_dir / \"eval\" / \"base\", run_dir / \"eval\" / \"tuned\"], "
           "[\"base\", \"tuned\"])\n",
           ("tests/test_pipeline.py::test_run_also_tests_another_benchmark_with_the_models_loaded_once",)),
    # ---- extraction ----
    Mutant("extraction: the last number after '####' instead of the first", "evaluate/extraction.py",
           "        answer = parse_number(after)\n",
           "        answer = find_numbers(after)[-1] if find_numbers(after) else None\n",
           ("tests/evaluate/test_extraction.py",)),
    Mutant("extraction: no '####' means no answer", "evaluate/extraction.py",
           "    return numbers[-1] if numbers else None\n",
           "    return None\n",
           ("tests/evaluate/test_extraction.py",)),
    Mutant("extraction: exact_match skips regexes_to_ignore after the first", "evaluate/extraction.py",
           "    for pattern in GSM8K_REGEXES_TO_IGNORE:\n",
           "    for pattern in GSM8K_REGEXES_TO_IGNORE[:1]:\n",
           AGREEMENT_TESTS),
    Mutant("extraction: flexible-extract takes the first match, not the last", "evaluate/extraction.py",
           'regex["regex_pattern"], regex.get("group_select", 0))',
           'regex["regex_pattern"], 0)',
           AGREEMENT_TESTS),
    Mutant("extraction: gsm8k_cot scored with gsm8k's strict filter", "evaluate/extraction.py",
           "    filters = TASK_FILTERS[task]\n",
           "    filters = FILTERS\n",
           AGREEMENT_TESTS),
    # ---- metrics: McNemar ----
    Mutant("metrics: McNemar counts concordant pairs", "evaluate/metrics.py",
           "    b = sum(1 for base, tuned in zip(base_correct, tuned_correct, strict=True) if base and not tuned)\n",
           "    b = sum(1 for base, tuned in zip(base_correct, tuned_correct, strict=True) if base)\n",
           ("tests/evaluate/test_metrics.py",)),
    Mutant("metrics: McNemar one-sided", "evaluate/metrics.py",
           'binomtest(c, b + c, 0.5, alternative="two-sided")',
           'binomtest(c, b + c, 0.5, alternative="greater")',
           ("tests/evaluate/test_metrics.py",)),
    # ---- metrics: the verifier's AUC ----
    Mutant("metrics: AUC ties ranked in order, not counted half", "evaluate/metrics.py",
           "    ranks = rankdata(scores)",
           '    ranks = rankdata(scores, method="ordinal")',
           ("tests/evaluate/test_verifier.py", "tests/evaluate/test_curves.py")),
    Mutant("curves: a problem without right samples counts as AUC 0 within problems", "evaluate/curves.py",
           "    mixed = [value for value in within if value is not None]\n",
           "    mixed = [value or 0.0 for value in within]\n",
           ("tests/evaluate/test_curves.py",)),
    # ---- fingerprint ----
    Mutant("fingerprint: a half-written eval dir resumes whatever settings wrote it", "fingerprint.py",
           "    difference = first_difference(stored, current)\n",
           "    difference = first_difference(stored, current) if what != 'predictions' or "
           "(directory / 'metrics.json').is_file() else None\n",  # eval dirs only: training dirs still checked
           ("tests/reliability/test_rerun_safety.py::test_a_half_written_evaluation_resumes_only_with_the_settings_"
            "that_wrote_it",), named_in_issue=True),
    Mutant("fingerprint: calculator left out of the eval fingerprint", "fingerprint.py",
           '"dtype", "calculator",\n',
           '"dtype",\n',
           ("tests/reliability/test_rerun_safety.py::test_a_half_written_evaluation_resumes_only_with_the_settings_"
            "that_wrote_it",)),
    Mutant("fingerprint: the adapter's files are not hashed", "fingerprint.py",
           'return {"kind": "eval", "model": _model_identity(cfg), "adapter": files_digest(adapter_dir),',
           'return {"kind": "eval", "model": _model_identity(cfg), "adapter": None if adapter_dir is None else '
           'str(adapter_dir),',
           ("tests/reliability/test_rerun_safety.py::test_a_half_written_evaluation_resumes_only_with_the_settings_"
            "that_wrote_it",)),
    # ---- augment ----
    Mutant("augment: a perturbed question keeps one old number", "data/augment.py",
           "    question = _rewrite(problem.question, mapping)\n",
           "    question = _rewrite(problem.question,"
           " dict(list(mapping.items())[1:]) if len(variable) > 1 else mapping)\n",
           ("tests/data/test_augment.py",), named_in_issue=True),
    Mutant("augment: the answer is not rewritten", "data/augment.py",
           "    answer = _rewrite_plain(problem.answer, mapping[old_answer])\n",
           "    answer = problem.answer\n",
           ("tests/data/test_augment.py",)),
    # ---- sandbox ----
    Mutant("sandbox: audit-hook violations do not block the result", "sandbox_child.py",
           "    if violations:\n        reason, answer = \"blocked: \" + violations[0], None\n",
           "    if False:\n        reason, answer = \"blocked: \" + violations[0], None\n",
           ("tests/test_sandbox.py",)),
    Mutant("sandbox: any open() allowed", "sandbox_child.py",
           '        if event == "open" and open_allowed(*args[:3]):\n',
           '        if event == "open":\n',
           ("tests/test_sandbox.py",)),
]


def copy_checkout(target: Path) -> None:
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"))
        elif source.is_file():
            shutil.copy2(source, target / name)
    configs = ROOT / "configs"  # a link to src/mathtune/configs in the checkout
    if configs.is_symlink():
        (target / "configs").symlink_to(os.readlink(configs))


def run_tests(copy: Path, tests: tuple[str, ...], timeout: int) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(copy / "src"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, "timed out"
    lines = [line for line in done.stdout.splitlines() if line.strip() and not line.startswith("!!!")]
    failed = [line.split(" - ")[0] for line in lines if line.startswith("FAILED ")]
    return done.returncode, failed[0] if failed else lines[-1] if lines else done.stderr.strip()[-200:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", "--keyword", action="append", default=[],
                        help="run only the mutants whose name contains this (repeatable: any of them)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per mutant's test run")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip running each mutant's tests on the unmutated copy first")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.keyword or any(k.lower() in m.name.lower() for k in args.keyword)]
    if args.list:
        for mutant in chosen:
            print(f"{mutant.name}\n    src/mathtune/{mutant.file}; tests: {' '.join(mutant.tests)}")
        return 0
    started = time.perf_counter()
    killed, survived, stale = [], [], []
    with tempfile.TemporaryDirectory(prefix="mathtune-mutants-") as tmp:
        copy = Path(tmp)
        copy_checkout(copy)
        # A kill means something only if the same tests pass without the mutant (in the copy, too).
        for tests in ([] if args.no_baseline else list(dict.fromkeys(m.tests for m in chosen))):
            code, last = run_tests(copy, tests, args.timeout)
            if code != 0:
                print(f"BASELINE FAILS ({code}): {' '.join(tests)}: {last}")
                return 1
        if not args.no_baseline:
            print(f"baseline: the tests of every mutant pass unmutated ({time.perf_counter() - started:.0f} s)",
                  flush=True)
        for mutant in chosen:
            path = copy / "src" / "mathtune" / mutant.file
            source = path.read_text(encoding="utf-8")
            count = source.count(mutant.original)
            if count != 1:
                stale.append(mutant)
                print(f"STALE     {mutant.name}: the original snippet occurs {count} times in "
                      f"src/mathtune/{mutant.file}", flush=True)
                continue
            path.write_text(source.replace(mutant.original, mutant.replacement), encoding="utf-8")
            begun = time.perf_counter()
            try:
                code, last = run_tests(copy, mutant.tests, args.timeout)
            finally:
                path.write_text(source, encoding="utf-8")
            # pytest: 1 = tests failed; 2-5 = interrupted, internal or usage error, no tests (not a kill)
            verdict = "killed" if code in (1, -1) else "SURVIVED" if code == 0 else f"ERROR({code})"
            (killed if code in (1, -1) else survived if code == 0 else stale).append(mutant)
            print(f"{verdict:9} {mutant.name} ({time.perf_counter() - begun:.0f} s: {last})", flush=True)
    elapsed = time.perf_counter() - started
    named = [m for m in survived + stale if m.named_in_issue]
    print(f"\nmutants tried: {len(chosen)}, killed: {len(killed)}, surviving: {len(survived)}, "
          f"stale/errors: {len(stale)}; of the four bugs named in issue #41 surviving or stale: {len(named)}; "
          f"time: {elapsed:.0f} s")
    return 0 if not survived and not stale else 1


if __name__ == "__main__":
    sys.exit(main())
