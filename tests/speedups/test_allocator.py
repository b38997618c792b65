"""`mathtune train` re-executes itself under mimalloc on Linux, once, and says so in the run card; a
process that trains a method without quantization leaves bitsandbytes out."""

import json
import os
import subprocess
import sys

import pytest

from mathtune.speedups.allocator import (
    ACTIVE_MARKER,
    PRIMITIVE_CACHE,
    active_allocator,
    allocator_environment,
    mimalloc_library,
)

linux_with_mimalloc = pytest.mark.skipif(mimalloc_library() is None, reason="cmeel-mimalloc is Linux-only")


def test_no_reexecution_when_not_asked_or_already_done():
    assert allocator_environment("system", {}) is None
    assert allocator_environment("mimalloc", {ACTIVE_MARKER: "mimalloc"}) is None
    assert allocator_environment("mimalloc", {ACTIVE_MARKER: "system"}) is None


@linux_with_mimalloc
def test_environment_preloads_mimalloc_and_keeps_other_preloads():
    env = allocator_environment("mimalloc", {"LD_PRELOAD": "/opt/other.so", "PATH": "/bin"})
    first, second = env["LD_PRELOAD"].split(" ")
    assert first.endswith("libmimalloc.so") and os.path.isfile(first) and second == "/opt/other.so"
    assert env["MIMALLOC_PURGE_DELAY"] == "-1" and env[ACTIVE_MARKER] == "mimalloc" and env["PATH"] == "/bin"
    assert allocator_environment("mimalloc", {"MIMALLOC_PURGE_DELAY": "100"})["MIMALLOC_PURGE_DELAY"] == "100"
    assert env[PRIMITIVE_CACHE] == "64"
    assert allocator_environment("mimalloc", {PRIMITIVE_CACHE: "1024"})[PRIMITIVE_CACHE] == "1024"  # the user's wins


def test_this_process_reports_the_system_allocator():
    assert active_allocator() == "system"  # pytest itself was not preloaded


@linux_with_mimalloc
def test_train_command_runs_under_mimalloc(tiny_models, data_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != ACTIVE_MARKER}
    command = [sys.executable, "-m", "mathtune.cli", "train", "--model", str(tiny_models["llama"]),
               "--data-dir", str(data_dir), "--train-size", "8", "--max-steps", "2", "-o", str(tmp_path / "run")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    card = json.loads((tmp_path / "run" / "train_card.json").read_text())
    assert card["allocator"] == "mimalloc" and card["steps"] == 2
    done = subprocess.run([*command[:-1], str(tmp_path / "system"), "-s", "train.allocator=system"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "system" / "train_card.json").read_text())["allocator"] == "system"


@pytest.mark.parametrize(("method", "hidden"), [("lora", True), ("qlora", False)])
def test_a_training_process_leaves_out_bitsandbytes_unless_it_quantizes(method, hidden):
    code = ("import sys; from mathtune.methods.registry import hide_unused_bitsandbytes as hide; "
            "h = hide(sys.argv[1]); import peft; from peft.import_utils import is_bnb_available; "
            "print(h, is_bnb_available(), sys.modules.get('bitsandbytes') is not None)")
    done = subprocess.run([sys.executable, "-c", code, method], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-3:] == [str(hidden), str(not hidden), str(not hidden)]


def test_in_process_callers_are_not_the_reexecuted_process(monkeypatch):
    from mathtune.speedups.allocator import reexecuted

    assert not reexecuted()  # conftest's "system" marker keeps CLI tests in-process, imports untouched
    monkeypatch.setenv(ACTIVE_MARKER, "mimalloc")
    assert reexecuted()


def test_a_quantized_or_unknown_checkpoint_keeps_bitsandbytes(tmp_path):
    from mathtune.models.loading import may_store_quantized_weights

    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "bnb").mkdir()
    (tmp_path / "bnb" / "config.json").write_text(json.dumps({"quantization_config": {"load_in_4bit": True}}))
    assert not may_store_quantized_weights("smollm2-135m")  # embedded GGUF: dequantized on load
    assert not may_store_quantized_weights(str(tmp_path / "plain"))
    assert may_store_quantized_weights(str(tmp_path / "bnb"))
    assert may_store_quantized_weights("someone/some-model")  # a hub id is not looked up
