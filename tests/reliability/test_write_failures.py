"""Refused writes (full disk, quota, read-only, file-size limit) and the model cache under races.

The promise: one `mathtune: error:` line naming the path, what was kept and the command that
continues, exit 2, no temp file left behind; continuing after space is freed gives the result of an
uninterrupted run. The full disk is simulated without root: RLIMIT_FSIZE on a real process (the
kernel refuses the write with EFBIG, Python ignores SIGXFSZ) and a fault-injecting writer in-process.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import console_script

from mathtune.io import write_failure
from mathtune.models.loading import CACHE_MANIFEST, cache_entry_complete, publish_cache_entry


def _litter(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.name.startswith(".tmp") or p.name.endswith(".tmp")]


def _message_lines(stderr: str) -> list[str]:
    """stderr without progress bars: what a user reads as messages."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]


def _train_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(model), "--data-dir", str(data), "-o", str(out), "--max-steps", "6",
            "--train-size", "8", "-s", "train.precision=fp32", "-s", "train.save_every=2", *extra]


def test_full_disk_mid_checkpoint_is_one_line_and_resume_matches(run_cli, monkeypatch, tiny_llama, data_dir,
                                                                  tmp_path):
    """torch.save's own failure on a full disk (the issue's `inline_container.cc ... unexpected pos`)
    at the step-4 checkpoint: the half-written `.tmp-*` is removed, step 2 is kept and named, and
    `--resume` after freeing space ends with the uninterrupted run's adapter."""
    real_save = torch.save

    def full_disk_save(obj, path, *args, **kwargs):
        if "step" in obj and obj["step"] == 4:
            Path(path).write_bytes(b"PK\x03\x04" + b"\0" * 60)  # what torch got out before the disk filled
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")
        return real_save(obj, path, *args, **kwargs)

    out = tmp_path / "run"
    monkeypatch.setattr(torch, "save", full_disk_save)
    result = run_cli(*_train_args(tiny_llama, data_dir, out))
    monkeypatch.setattr(torch, "save", real_save)
    lines = _message_lines(result.stderr)
    assert result.code == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("mathtune: error: cannot write"), result.stderr
    assert str(out) in lines[0] and "checkpoint at step 2" in lines[0] and "--resume" in lines[0], lines[0]
    assert "Traceback" not in result.stderr and not _litter(out)

    assert run_cli(*_train_args(tiny_llama, data_dir, out, "--resume")).code == 0
    reference = tmp_path / "reference"
    assert run_cli(*_train_args(tiny_llama, data_dir, reference)).code == 0
    from safetensors.torch import load_file

    got, want = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (out, reference))
    assert got.keys() == want.keys()
    assert max((got[k] - want[k]).abs().max().item() for k in got) <= 1e-6


def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return apply


def test_eval_over_a_file_size_limit_is_one_line_and_rerun_matches(run_cli, tiny_llama, data_dir, tmp_path):
    """A real kernel refusal (EFBIG under RLIMIT_FSIZE) while predictions.jsonl grows: exit 2, one
    line naming the file and the predictions kept; the same command afterwards finishes the rest, and
    the predictions equal an uninterrupted evaluation's."""
    common = ["--base", "--model", str(tiny_llama), "--data-dir", str(data_dir), "--eval-size", "12",
              "-s", "eval.batch_size=1", "-s", "eval.max_new_tokens=8", "-s", "eval.perplexity=false"]
    reference = tmp_path / "reference"
    assert run_cli("eval", *common, "-o", str(reference)).code == 0
    want = [json.loads(line) for line in (reference / "predictions.jsonl").read_text().splitlines()]
    size = (reference / "predictions.jsonl").stat().st_size
    fingerprint = (reference / "fingerprint.json").stat().st_size
    out = tmp_path / "out"
    argv = [console_script(), "eval", *common, "-o", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                          preexec_fn=_limit_file_size(max(fingerprint, size // 2) + 16))
    lines = _message_lines(proc.stderr)
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("mathtune: error: cannot write"), proc.stderr
    assert "predictions.jsonl" in lines[0] and "predictions in" in lines[0] and "continue with" in lines[0]
    assert not _litter(out)
    kept = (out / "predictions.jsonl").read_text().count("\n")
    assert 0 < kept < len(want)

    assert run_cli("eval", *common, "-o", str(out)).code == 0
    got = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    strip = ("seconds", "latency")
    assert [{k: v for k, v in r.items() if k not in strip} for r in got] == \
        [{k: v for k, v in r.items() if k not in strip} for r in want]


def test_write_failure_recognizes_wrapped_errors():
    import errno

    assert write_failure(OSError(errno.ENOSPC, "No space left on device", "/x/y"))[1] == "/x/y"
    assert write_failure(OSError(errno.EROFS, "Read-only file system")) is not None
    assert write_failure(OSError(errno.ENOENT, "No such file")) is None
    assert write_failure(ValueError("bad")) is None
    from safetensors import SafetensorError

    full = 'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
    assert write_failure(SafetensorError(full)) is not None
    assert write_failure(SafetensorError("Error while deserializing header: HeaderTooLarge")) is None
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert write_failure(outer) is not None


def _save_tiny_model(model_dir: Path):
    def write(out: Path) -> None:
        for item in model_dir.iterdir():
            (out / item.name).write_bytes(item.read_bytes())
    return write


def _publish_at(barrier, target: str, model_dir: str) -> None:
    barrier.wait()  # every process leaves the barrier at the same instant
    publish_cache_entry(Path(target), _save_tiny_model(Path(model_dir)))


def test_concurrent_cache_conversions_all_succeed(tiny_llama, tmp_path):
    """Four processes released together convert the same model into an empty cache: none fails
    (today's code: `OSError: [Errno 39] Directory not empty` for the losers), one entry remains, whole."""
    target = tmp_path / "cache" / "gguf" / "model-abc"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_publish_at, args=(barrier, str(target), str(tiny_llama))) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0, 0, 0, 0]
    assert cache_entry_complete(target)
    assert [p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")] == [target.name]


def test_torn_cache_entry_is_rebuilt(tiny_llama, tmp_path):
    target = tmp_path / "cache" / "entry"
    publish_cache_entry(target, _save_tiny_model(tiny_llama))
    weights = next(target.glob("*.safetensors"))
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])  # torn: half the weights
    assert not cache_entry_complete(target)
    publish_cache_entry(target, _save_tiny_model(tiny_llama))
    assert cache_entry_complete(target) and weights.read_bytes() == whole
    (target / CACHE_MANIFEST).unlink()  # an entry whose manifest never got written is not trusted either
    assert not cache_entry_complete(target)


def test_full_cache_disk_is_one_line_naming_the_cache(tmp_path):
    import errno

    def full(out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"\0" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "cache" / "gguf" / "entry"
    from mathtune.errors import MathtuneError

    with pytest.raises(MathtuneError, match="cannot write the model cache .*MATHTUNE_CACHE_DIR"):
        publish_cache_entry(target, full)
    assert not target.exists() and not [p for p in target.parent.iterdir() if not p.name.endswith(".lock")]


def test_an_entry_from_before_manifests_is_kept_when_whole_and_rebuilt_when_cut(tiny_llama, tmp_path):
    target = tmp_path / "cache" / "old-entry"
    target.mkdir(parents=True)
    _save_tiny_model(tiny_llama)(target)  # as the old code left it: the files, no manifest
    weights = next(target.glob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns

    def must_not_rebuild(out: Path) -> None:
        raise AssertionError("a whole entry was rebuilt")

    publish_cache_entry(target, must_not_rebuild)
    assert cache_entry_complete(target) and weights.stat().st_mtime_ns == stamp
    (target / CACHE_MANIFEST).unlink()
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) - 100])
    publish_cache_entry(target, _save_tiny_model(tiny_llama))
    assert cache_entry_complete(target) and weights.read_bytes() == whole
