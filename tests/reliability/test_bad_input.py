"""Bad input of every kind through the real `mathtune` entry point.

The promise checked for each case: exit code 2, exactly one line on stderr starting
`mathtune: error:` that names the problem, no traceback, and no partial output (the output path
is absent afterwards, or byte-for-byte as it was before).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import console_script

from mathtune.io import run_lock
from mathtune.methods.registry import METHODS

GOOD_ROW = {"question": "Tom has 2 pens and buys 3 more. How many pens?", "answer": "2 + 3 = 5\n#### 5"}


@dataclass
class Env:
    tmp: Path
    model: Path
    data: Path

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def train(self, *extra: str) -> list[str]:
        """A `train` call that would succeed but for `extra`."""
        return ["train", "--model", str(self.model), "--data-dir", str(self.data), "-o", str(self.out),
                "--max-steps", "1", "-s", "train.precision=fp32", *extra]

    def jsonl_train(self, path: Path) -> list[str]:
        return self.train("-s", "data.dataset=jsonl", "-s", f"data.train_file={path}")


@dataclass
class Case:
    argv: list[str]
    says: list[str]  # fragments the error line must contain
    watch: list[Path] = field(default_factory=list)  # paths that must be absent or unchanged


def _jsonl(*rows: object) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def _model_copy(env: Env, name: str) -> Path:
    target = env.tmp / name
    target.mkdir()
    for item in env.model.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    return target


def _run_dir_without_adapter(env: Env) -> Path:
    run = env.tmp / "run"
    run.mkdir()
    (run / "config.yaml").write_text(
        f"model: {{name: '{env.model}'}}\ndata: {{data_dir: '{env.data}'}}\ntrain: {{precision: fp32}}\n")
    return run


def _non_empty_out(env: Env) -> Path:
    env.out.mkdir()
    (env.out / "train_card.json").write_text("{}")
    return env.out


# name -> builder. Each builder makes its files under env.tmp and returns the call to make.
CASES: dict[str, Callable[[Env], Case]] = {
    # --- data -------------------------------------------------------------------------------
    "jsonl-malformed-line": lambda e: Case(
        e.jsonl_train(e.file("bad.jsonl", _jsonl(GOOD_ROW, '{"question": oops}'))), ["bad.jsonl:2", "malformed"]),
    "jsonl-empty-file": lambda e: Case(e.jsonl_train(e.file("empty.jsonl", "")), ["empty.jsonl", "no rows"]),
    "jsonl-missing-field": lambda e: Case(
        e.jsonl_train(e.file("m.jsonl", _jsonl({"question": "q?"}))), ["m.jsonl:1", "missing", "answer"]),
    "jsonl-non-numeric-answer": lambda e: Case(
        e.jsonl_train(e.file("n.jsonl", _jsonl({"question": "q?", "answer": "so #### abc"}))),
        ["n.jsonl:1", "no numeric answer"]),
    "jsonl-huge-line": lambda e: Case(
        e.jsonl_train(e.file("h.jsonl", _jsonl({"question": "x" * 1_100_000, "answer": "#### 1"}))),
        ["h.jsonl:1", "longer than"]),
    # 0x81 is neither UTF-8 nor Windows-1252 (a Latin-1 "é" alone now reads as Windows-1252, with a warning)
    "jsonl-latin1-bytes": lambda e: Case(
        e.jsonl_train(e.file("l.jsonl", '{"question": "caf\x81?", "answer": "#### 1"}\n'.encode("latin-1"))),
        ["l.jsonl:1", "not UTF-8"]),
    "jsonl-line-not-an-object": lambda e: Case(
        e.jsonl_train(e.file("a.jsonl", _jsonl(GOOD_ROW, [1, 2]))), ["a.jsonl:2", "JSON object"]),
    "jsonl-file-missing": lambda e: Case(e.jsonl_train(e.tmp / "nope.jsonl"), ["not found", "nope.jsonl"]),
    "jsonl-dataset-without-files": lambda e: Case(e.train("-s", "data.dataset=jsonl"), ["data.train_file"]),
    "data-dir-missing": lambda e: Case(
        e.train("--data-dir", str(e.tmp / "no-data")),
        ["no-data does not exist", "gsm8k/train.jsonl", "--data-dir", "MATHTUNE_DATA_DIR"]),
    "data-dir-without-gsm8k": lambda e: Case(
        e.train("--data-dir", str(e.tmp)), ["no gsm8k/ folder", "gsm8k/train.jsonl"]),
    # --- model ------------------------------------------------------------------------------
    "gguf-random-bytes": lambda e: Case(
        e.train("--model", str(e.file("x.gguf", os.urandom(4096)))), ["x.gguf", "GGUF"]),
    "gguf-file-missing": lambda e: Case(e.train("--model", str(e.tmp / "gone.gguf")), ["GGUF file not found"]),
    "safetensors-corrupt": lambda e: Case(
        e.train("--model", str(_corrupt_weights(e))), ["cannot load model", "corrupt-weights"]),
    "model-dir-without-config": lambda e: Case(
        e.train("--model", str(_model_without_config(e))), ["no config.json"]),
    "model-unknown-name-offline-hub": lambda e: Case(
        e.train("--model", "nobody-xyz/no-such-model"), ["model 'nobody-xyz/no-such-model'", "cannot be reached"]),
    "model-dir-only-config": lambda e: Case(
        e.train("--model", str(_model_only_config(e))), ["only-config", "no weights", "no tokenizer",
                                                          "model.safetensors", "tokenizer.json"]),
    "model-path-missing": lambda e: Case(e.train("--model", "./no/such/dir"), ["no/such/dir", "not a directory"]),
    # --- config -----------------------------------------------------------------------------
    "method-unknown": lambda e: Case(e.train("--method", "dora"), ["unknown method 'dora'", "lora"]),
    "prompt-unknown": lambda e: Case(e.train("--prompt", "zzz"), ["prompt.strategy", "'zzz'"]),
    "yaml-wrong-type": lambda e: Case(
        e.train("-c", str(e.file("t.yaml", "train: {lr: fast}\n"))), ["train.lr", "'fast'"]),
    "yaml-unknown-key": lambda e: Case(
        e.train("-c", str(e.file("k.yaml", "train: {lrr: 0.1}\n"))), ["unknown config key 'train.lrr'"]),
    "yaml-top-level-list": lambda e: Case(
        e.train("-c", str(e.file("l.yaml", "- train\n- eval\n"))), ["l.yaml", "mapping"]),
    "yaml-syntax-error": lambda e: Case(
        e.train("-c", str(e.file("s.yaml", "train: {lr: [\n"))), ["s.yaml", "not valid YAML"]),
    "yaml-file-missing": lambda e: Case(e.train("-c", str(e.tmp / "none.yaml")), ["config file not found"]),
    "yaml-latin1-bytes": lambda e: Case(
        e.train("-c", str(e.file("b.yaml", "# caf\xe9\ntrain: {}\n".encode("latin-1")))), ["b.yaml", "YAML"]),
    "yaml-section-is-scalar": lambda e: Case(
        e.train("-c", str(e.file("x.yaml", "train: 3\n"))), ["'train'"]),
    "train-size-negative": lambda e: Case(e.train("--train-size", "-5"), ["data.train_size", "-5"]),
    "batch-size-zero": lambda e: Case(e.train("-s", "train.batch_size=0"), ["train.batch_size", "0"]),
    "lr-negative": lambda e: Case(e.train("-s", "train.lr=-1e-4"), ["train.lr"]),
    "set-without-equals": lambda e: Case(e.train("-s", "train.lr"), ["'train.lr'", "key.sub=value"]),
    "set-unknown-key": lambda e: Case(e.train("-s", "trian.lr=0.1"), ["unknown config key 'trian'"]),
    "set-into-a-scalar": lambda e: Case(e.train("-s", "train.lr.x=1"), ["train.lr.x", "not a section"]),
    "breakdown-prompt-on-main-subset": lambda e: Case(e.train("--prompt", "breakdown"), ["data.subset=socratic"]),
    # --- output dir and locking -------------------------------------------------------------
    "output-dir-not-empty": lambda e: Case(e.train(), ["not empty", "--overwrite"], [_non_empty_out(e)]),
    "output-dir-under-a-file": lambda e: Case(
        e.train("-o", str(e.file("plain-file", "x") / "run")), ["cannot create output directory"],
        [e.tmp / "plain-file"]),
    "output-dir-is-a-file": lambda e: Case(
        e.train("-o", str(e.file("a-file", "x"))), ["not a directory"], [e.tmp / "a-file"]),
    "eval-run-dir-missing": lambda e: Case(
        ["eval", str(e.tmp / "no-run"), "--eval-size", "2"], ["no-run", "does not exist"], [e.tmp / "no-run"]),
    "eval-run-dir-without-adapter": lambda e: Case(
        ["eval", str(_run_dir_without_adapter(e)), "--eval-size", "2", "-s", "eval.max_new_tokens=2"],
        ["no trained weights", "train first"], [e.tmp / "run"]),
    "compare-nothing-to-compare": lambda e: Case(["compare", str(e.data)], ["holds no evaluation"]),
    # --- command line itself ----------------------------------------------------------------
    "cli-unknown-command": lambda e: Case(["frobnicate"], ["No such command 'frobnicate'"]),
    "cli-unknown-option": lambda e: Case(["train", "--frobnicate"], ["No such option: --frobnicate"]),
    "cli-option-not-a-number": lambda e: Case(["train", "--train-size", "abc"], ["--train-size"]),
    "cli-missing-argument": lambda e: Case(["compare"], ["Missing argument"]),
}


def _corrupt_weights(env: Env) -> Path:
    folder = _model_copy(env, "corrupt-weights")
    (folder / "model.safetensors").write_bytes(os.urandom(2048))
    return folder


def _model_only_config(env: Env) -> Path:
    folder = env.tmp / "only-config"
    folder.mkdir()
    (folder / "config.json").write_bytes((env.model / "config.json").read_bytes())
    return folder


def _model_without_config(env: Env) -> Path:
    folder = _model_copy(env, "no-config")
    (folder / "config.json").unlink()
    return folder


def snapshot(path: Path) -> dict[str, tuple[int, int]] | None:
    """Every file and folder under `path` with its size and mtime: equal snapshots mean untouched."""
    if not path.exists():
        return None
    if path.is_file():
        return {".": (path.stat().st_size, path.stat().st_mtime_ns)}
    found = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = Path(root) / name
            found[str(full.relative_to(path))] = (full.stat().st_size if full.is_file() else -1,
                                                   full.stat().st_mtime_ns)
    return found


def assert_one_line_error(code: int, stderr: str, says: list[str]) -> None:
    lines = stderr.strip().splitlines()
    assert code == 2, (code, stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith("mathtune: error: "), stderr
    assert "Traceback" not in stderr
    for fragment in says:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def env(tmp_path, tiny_llama, data_dir, monkeypatch) -> Env:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # a default output_dir (runs/quickstart) would land here, and is checked
    return Env(work, tiny_llama, data_dir)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_clean_line_and_leaves_no_output(name, env, run_cli):
    case = CASES[name](env)
    watched = [env.out, env.tmp / "runs", *case.watch]
    before = {path: snapshot(path) for path in watched}
    result = run_cli(*case.argv)
    assert_one_line_error(result.code, result.stderr, case.says)
    assert {path: snapshot(path) for path in watched} == before
    assert not list(env.tmp.rglob("*.tmp")) and not list(env.tmp.rglob(".lock"))


@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_second_run_into_a_locked_dir_is_refused_and_deletes_nothing(flag, env, run_cli):
    env.out.mkdir()
    (env.out / "config.yaml").write_text("written by the first run\n")
    with run_lock(env.out):  # the first run, still writing
        before = snapshot(env.out)
        result = run_cli(*env.train(flag))
        assert snapshot(env.out) == before
    assert_one_line_error(result.code, result.stderr, ["another mathtune process is writing", str(env.out)])


def test_losing_the_lock_race_on_a_fresh_dir_deletes_nothing(env, run_cli, monkeypatch):
    """Two runs start into one absent dir: the one that finds the lock taken must not remove the
    directory the winner has just created (it once did: it took the dir for its own)."""
    import mathtune.io as io

    real_prepare, held = io.prepare_output_dir, []

    def prepare_then_lose_race(path, overwrite, resume=False):
        prepared = real_prepare(path, overwrite, resume)
        lock = io.run_lock(prepared)  # the other run wins the lock right after we made the dir
        lock.__enter__()
        held.append(lock)
        (prepared / "config.yaml").write_text("the winner's config\n")
        return prepared

    monkeypatch.setattr(io, "prepare_output_dir", prepare_then_lose_race)
    try:
        result = run_cli(*env.train())
        assert_one_line_error(result.code, result.stderr, ["another mathtune process is writing"])
        assert (env.out / "config.yaml").read_text() == "the winner's config\n"
    finally:
        held[0].__exit__(None, None, None)


@pytest.mark.skipif("stacked-lora" not in METHODS, reason="the stacked-lora method is not registered")
def test_stacked_stage_two_without_stage_one_adapter(env, run_cli):
    result = run_cli(*env.train("--method", "stacked-lora", "-s", f"method.stage1_adapter={env.tmp / 'none'}"))
    assert_one_line_error(result.code, result.stderr, ["stage1_adapter", "does not exist", "train stage 1 first"])
    assert not env.out.exists()


# A few cases again through a real process: the exit status the shell sees, and stderr with every
# library's import-time chatter included (torchao/bitsandbytes warnings once broke "one line").
SUBPROCESS_CASES = ["jsonl-malformed-line", "safetensors-corrupt", "cli-unknown-command"]


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_real_process_exit_code_and_stderr(name, env):
    case = CASES[name](env)
    before = snapshot(env.out)
    child_env = {k: v for k, v in os.environ.items() if k != "MATHTUNE_DATA_DIR"}
    child_env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    entry = console_script()  # the installed console script: mathtune.cli:main
    proc = subprocess.run([entry, *case.argv],
                          capture_output=True, text=True, cwd=env.tmp, env=child_env, timeout=300)
    assert_one_line_error(proc.returncode, proc.stderr, case.says)
    assert snapshot(env.out) == before


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_the_calculator_on_a_seq2seq_model_is_refused_in_one_line(command, tiny_models, data_dir, tmp_path, run_cli):
    """T5 decodes with `generate`, which has no calculator: asking for one is refused before anything
    is written, never ignored while metrics.json records it as used."""
    out, samples = tmp_path / "out", ["-k", "2"] if command == "sample" else []
    result = run_cli(command, "--base", "--model", str(tiny_models["t5"]), "--data-dir", str(data_dir), *samples,
                     "--eval-size", "2", "-s", "eval.calculator=true", "-s", "eval.max_new_tokens=4", "-o", str(out))
    assert_one_line_error(result.code, result.stderr, ["eval.calculator", "seq2seq"])
    assert not out.exists()
    done = run_cli(command, "--base", "--model", str(tiny_models["t5"]), "--data-dir", str(data_dir), *samples,
                   "--eval-size", "2", "-s", "eval.max_new_tokens=4", "-o", str(out))
    assert done.code == 0, done.stderr
