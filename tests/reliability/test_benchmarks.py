"""Any tuned model on any benchmark, scored right (GSM8K, SVAMP, MATH, ARC, JSONL), one chat-template
switch everywhere, and the refusal to train on test problems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mathtune.config import build_config
from mathtune.data.problems import Problem, benchmark_name, load_split
from mathtune.errors import MathtuneError
from mathtune.evaluate.extraction import INVALID, score_answer
from mathtune.evaluate.generation import Generation
from mathtune.prompts import get_strategy

SVAMP_ROW = {"Body": "Each pack costs 76 dollars. There is a discount of 25 dollars on each pack",
             "Question": "How much do you pay for each pack?", "Equation": "( 76.0 - 25.0 )", "Answer": 51.0}
MATH_ROWS = [{"problem": "What is $1/2 + 0$?", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "level": "Level 1",
              "type": "Algebra"},
             {"problem": "Expand $(x+1)^2$.", "solution": "$\\boxed{x^2+2x+1}$", "level": "Level 2",
              "type": "Algebra"}]
ARC_ROW = {"id": "Mercury_1", "question": "Which gas do plants take in?", "answerKey": "B",
           "choices": {"text": ["oxygen", "carbon dioxide", "helium"], "label": ["A", "B", "C"]}}


def _svamp_dir(root: Path, count: int = 20) -> Path:
    rows = [{**SVAMP_ROW, "ID": f"chal-{i}", "Body": f"{SVAMP_ROW['Body']} number {i}"} for i in range(count)]
    (root / "svamp").mkdir(parents=True)
    (root / "svamp" / "SVAMP.json").write_text(json.dumps(rows))
    return root


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# --- answer checking ---------------------------------------------------------------------------


@pytest.mark.parametrize(("output", "answer", "kind", "right"), [
    ("so the answer is \\boxed{0.5}", "\\frac{1}{2}", "latex", True),
    ("#### \\frac{2}{4}", "\\frac{1}{2}", "latex", True),
    ("#### (x+1)^2", "x^2+2x+1", "latex", True),
    ("#### x^2+1", "x^2+2x+1", "latex", False),
    ("She has 48 + 24 = 72 clips.\n#### 72 clips\n\nQ: 5 more", "72", "number", True),
    ("It costs $72.00", "72", "number", True),
    ("#### 71", "72", "number", False),
])
def test_math_verify_checks_answers_symbolically(output, answer, kind, right):
    extracted, correct = score_answer(output, f"#### {answer}", answer, kind)
    assert correct["math-verify"] is right and extracted["math-verify"] != INVALID
    # MATH answers are no plain numbers: no numeric-match for them, the GSM8K scores for numbers
    assert ("numeric-match" in correct) is (kind == "number")
    assert {"strict-match", "flexible-extract"} <= set(correct)


@pytest.mark.parametrize(("output", "strict", "flexible"), [
    ("Plants breathe in CO2.\n#### B", True, True),
    ("The answer is B.", False, True),
    ("Answer: (B) carbon dioxide", False, True),
    ("#### A", False, False),
    ("I think it is carbon dioxide", False, False),
])
def test_arc_is_scored_by_its_letter(output, strict, flexible):
    extracted, correct = score_answer(output, "#### B", "B", "choice")
    assert correct == {"strict-match": strict, "flexible-extract": flexible}
    assert set(extracted) == {"strict-match", "flexible-extract"}


def test_answer_format_category_fires_during_evaluation():
    """The right number in a form lm-eval's strict filter does not read is `answer-format`; rows used to
    be categorised only when numeric-match was false, where that category cannot happen."""
    from mathtune.evaluate.scoring import score_rows, summarize_predictions

    problem = Problem("1", "Tom has 70 pens and buys 2. How many?", "70 + 2 = 72\n#### 72", "72")
    generations = [Generation("Tom has 70 + 2 = 72 pens. The answer is 72.", False, 12)]
    (row,) = score_rows([problem], generations, get_strategy("qa"), ["Q: ..."])
    assert row["correct"]["numeric-match"] and not row["correct"]["strict-match"]
    assert row["failure"] == "answer-format"
    assert summarize_predictions([row])["failures"]["answer-format"] == 1


# --- datasets ------------------------------------------------------------------------------------


def test_math_and_arc_local_files_are_loaded_and_scored_end_to_end(tmp_path):
    """MATH from local JSONL is scored by math-verify, ARC by letter, through `evaluate` itself."""
    from mathtune.evaluate.scoring import eval_problems
    from mathtune.recipes.evaluate import evaluate

    class FixedOutputs:  # a backend that answers every prompt with the next canned output
        def __init__(self, outputs: list[str]) -> None:
            self.outputs = outputs

        def generate(self, requests, **_):
            return [Generation(self.outputs.pop(0), False, 5) for _ in requests]

    math_file = _jsonl(tmp_path / "math.jsonl", MATH_ROWS)
    cfg = build_config({"data": {"dataset": "math", "test_file": str(math_file)},
                        "eval": {"num_problems": None, "perplexity": False}})
    problems = load_split(cfg.data, None, "test")
    answers = {p.answer: p for p in problems}
    assert set(answers) == {"\\frac{1}{2}", "x^2+2x+1"} and {p.kind for p in problems} == {"latex"}
    outputs = ["#### 0.5" if p.answer == "\\frac{1}{2}" else "#### x^2+1" for p in eval_problems(cfg)]
    metrics = evaluate(cfg, FixedOutputs(outputs), tmp_path / "math-eval", "base", show_progress=False)
    assert metrics["benchmark"] == "math" and metrics["scores"]["math-verify"]["exact_match"] == 0.5
    assert "numeric-match" not in metrics["scores"]

    arc_file = _jsonl(tmp_path / "arc.jsonl", [ARC_ROW, {**ARC_ROW, "id": "Mercury_2", "answerKey": "C"}])
    cfg = build_config({"data": {"dataset": "arc-challenge", "test_file": str(arc_file)},
                        "eval": {"num_problems": None, "perplexity": False}})
    metrics = evaluate(cfg, FixedOutputs(["#### B", "#### B"]), tmp_path / "arc-eval", "base",
                       show_progress=False)
    assert set(metrics["scores"]) == {"strict-match", "flexible-extract"}
    assert metrics["scores"]["strict-match"]["exact_match"] == 0.5
    assert metrics["failures"]["wrong-reasoning"] == 1


def test_svamp_is_split_into_seeded_disjoint_train_and_test(tmp_path):
    data_dir = _svamp_dir(tmp_path)
    cfg = build_config({"data": {"dataset": "svamp", "data_dir": str(data_dir)}})
    train, test = (load_split(cfg.data, data_dir, split) for split in ("train", "test"))
    assert (len(train), len(test)) == (14, 6)  # the hub's 700/300 proportion
    assert not {p.id for p in train} & {p.id for p in test}
    assert [p.id for p in load_split(cfg.data, data_dir, "test")] == [p.id for p in test]  # seeded
    everything = build_config({"data": {"dataset": "svamp", "data_dir": str(data_dir), "svamp_test": "all"}})
    assert len(load_split(everything.data, data_dir, "test")) == 20
    assert benchmark_name(cfg.data) == "svamp" and benchmark_name(everything.data) == "svamp-all"


def test_svamp_real_file_gives_the_hubs_sizes():
    from helpers import SHARED_DATA

    if not (SHARED_DATA / "svamp" / "SVAMP.json").is_file():
        pytest.skip("no local SVAMP copy")
    cfg = build_config({"data": {"dataset": "svamp", "data_dir": str(SHARED_DATA)}})
    assert [len(load_split(cfg.data, SHARED_DATA, s)) for s in ("train", "test")] == [700, 300]


def test_training_on_test_problems_is_refused_unless_asked(tmp_path, run_cli, tiny_llama):
    data_dir = _svamp_dir(tmp_path / "data")
    result = run_cli("train", "--model", str(tiny_llama), "--data-dir", str(data_dir), "-s", "data.dataset=svamp",
                     "-s", "data.svamp_test=all", "-o", str(tmp_path / "run"))
    assert result.code == 2 and result.stderr.count("\n") == 1
    assert "also test problems" in result.stderr and "allow_test_overlap" in result.stderr
    assert not (tmp_path / "run").exists()
    same = _jsonl(tmp_path / "rows.jsonl", [{"question": "What is 2+3?", "answer": "#### 5"}])
    result = run_cli("train", "--model", str(tiny_llama), "-s", "data.dataset=jsonl", "-s",
                     f"data.train_file={same}", "-s", f"data.test_file={same}", "-o", str(tmp_path / "run"))
    assert result.code == 2 and "also test problems" in result.stderr

    from mathtune.recipes.checks import check_no_test_problems_in_training

    allowed = build_config({"data": {"dataset": "jsonl", "train_file": str(same), "test_file": str(same),
                                     "allow_test_overlap": True}})
    check_no_test_problems_in_training(allowed)  # asked for explicitly: no error
    own = build_config({"data": {"dataset": "svamp", "data_dir": str(data_dir)}})
    check_no_test_problems_in_training(own)  # the holdout split: disjoint


# --- a run's model on another benchmark --------------------------------------------------------


def test_data_overrides_evaluate_a_run_on_another_benchmark(tmp_path, run_cli, finished_run, data_dir):
    """`eval RUN -s data.dataset=jsonl -s data.test_file=F` tests the run's model on F (it used to test
    on the run's own data again), into eval/jsonl-<stem>/tuned; `compare` pairs within a benchmark."""
    rows = [{"id": f"x{i}", "question": f"Ann has {i} pens and buys 2. How many?", "answer": f"#### {i + 2}"}
            for i in range(3)]
    test_file = _jsonl(tmp_path / "mine.jsonl", rows)
    common = ("-s", "eval.max_new_tokens=4", "-s", "eval.perplexity=false", "--data-dir", str(data_dir))
    result = run_cli("eval", str(finished_run), "-s", "data.dataset=jsonl", "-s", f"data.test_file={test_file}",
                     *common)
    assert result.code == 0, result.stderr
    out = finished_run / "eval" / "jsonl-mine" / "tuned"
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(row["id"] for row in predictions) == ["x0", "x1", "x2"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["benchmark"] == "jsonl-mine" and "math-verify" in metrics["scores"]
    assert run_cli("eval", str(finished_run), "-s", "eval.num_problems=3", *common).code == 0  # its own data
    assert (finished_run / "eval" / "tuned" / "metrics.json").is_file()

    from mathtune.compare import compare_runs

    comparison = compare_runs([finished_run])
    assert {row["benchmark"] for row in comparison["rows"]} == {"gsm8k", "jsonl-mine"}
    assert comparison["pairs"] == []  # one model per benchmark: nothing paired across benchmarks


# --- one chat-template switch ----------------------------------------------------------------------

CHAT_TEMPLATE = ("{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_chat_template_applies_in_training_dev_check_and_evaluation(tiny_llama, data_dir, tmp_path):
    """Training examples, the dev-slice check and `evaluate` all see the chat-formatted prompt (training
    and the dev slice used to see the plain one)."""
    import shutil
    from types import SimpleNamespace

    from mathtune.evaluate.backend import build_backend
    from mathtune.evaluate.scoring import quick_accuracy
    from mathtune.models.loading import load_tokenizer, resolve_source
    from mathtune.recipes.evaluate import evaluate
    from mathtune.recipes.train import build_examples

    model = shutil.copytree(tiny_llama, tmp_path / "chat-model")
    tokenizer = load_tokenizer(resolve_source(str(model)))
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(model)
    cfg = build_config({"model": {"name": str(model)}, "data": {"data_dir": str(data_dir)},
                        "prompt": {"chat_template": True}, "train": {"precision": "fp32"},
                        "eval": {"max_new_tokens": 3, "num_problems": 2, "perplexity": False}})
    problems = load_split(cfg.data, data_dir, "train")[:2]
    tokenizer = load_tokenizer(resolve_source(str(model)))
    examples, _ = build_examples(cfg, problems, SimpleNamespace(tokenizer=tokenizer, seq2seq=False))
    trained_on = tokenizer.decode(examples[0].input_ids)
    assert trained_on.startswith("<|user|>Q: ") and "<|end|><|assistant|>" in trained_on

    backend, _ = build_backend(cfg)
    seen: list[str] = []
    generate = backend.generate
    backend.generate = lambda requests, **kw: seen.extend(r.prompt for r in requests) or generate(requests, **kw)
    quick_accuracy(cfg, backend, problems)
    evaluate(cfg, backend, tmp_path / "eval", "base", backend.tokenizer, show_progress=False)
    assert len(seen) == 4 and all(p.startswith("<|user|>Q: ") and p.endswith("<|assistant|>") for p in seen)


def test_chat_template_reaches_lm_eval(monkeypatch, tmp_path):
    import lm_eval

    from mathtune.evaluate import lm_eval_bridge

    captured = {}
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda **kw: captured.update(kw))
    with pytest.raises(MathtuneError):  # our fake returns nothing
        lm_eval_bridge.run_lm_eval(["gsm8k"], {"pretrained": "x"}, data_dir=None, apply_chat_template=True)
    assert captured["apply_chat_template"] is True


def test_chat_template_on_a_model_without_one_is_one_line(run_cli, tiny_llama, data_dir, tmp_path):
    result = run_cli("eval", "--base", "--model", str(tiny_llama), "--data-dir", str(data_dir), "-s",
                     "prompt.chat_template=true", "-o", str(tmp_path / "out"))
    assert result.code == 2 and result.stderr.count("\n") == 1 and "no chat template" in result.stderr
    assert not (tmp_path / "out").exists()


# --- bad input -------------------------------------------------------------------------------------


def test_unknown_benchmark_and_bad_local_files_are_one_line(run_cli, tiny_llama, tmp_path):
    result = run_cli("eval", "--base", "--model", str(tiny_llama), "--dataset", "mmlu", "-o", str(tmp_path / "o"))
    assert result.code == 2 and result.stderr.count("\n") == 1 and "data.dataset" in result.stderr
    bad_math = _jsonl(tmp_path / "math.jsonl", [{"problem": "What is 1+1?"}])
    result = run_cli("eval", "--base", "--model", str(tiny_llama), "--dataset", "math", "-s",
                     f"data.test_file={bad_math}", "-o", str(tmp_path / "o"))
    assert result.code == 2 and "missing MATH field 'solution'" in result.stderr
    bad_arc = _jsonl(tmp_path / "arc.jsonl", [{"id": "1", "question": "q", "answerKey": "A"}])
    result = run_cli("eval", "--base", "--model", str(tiny_llama), "--dataset", "arc-challenge", "-s",
                     f"data.test_file={bad_arc}", "-o", str(tmp_path / "o"))
    assert result.code == 2 and "ARC field" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()
