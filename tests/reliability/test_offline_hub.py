"""A hub model id without a network: one line, at once, saying how to use a local copy.

No network is simulated by pointing the hub endpoint at a closed local port (connection refused),
with the offline switch the other tests run under turned off."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from helpers import console_script

CLOSED_PORT_ENDPOINT = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture
def no_network(monkeypatch):
    from huggingface_hub import constants

    from mathtune.hub import hub_unreachable

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", CLOSED_PORT_ENDPOINT)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    hub_unreachable.cache_clear()
    yield
    hub_unreachable.cache_clear()


def test_hub_id_without_network_fails_in_under_3_seconds(no_network, run_cli, data_dir, tmp_path):
    import mathtune.recipes.checks
    import mathtune.recipes.evaluate  # noqa: F401  (the imports' seconds are not the hub's)

    start = time.perf_counter()
    result = run_cli("eval", "--base", "--model", "someone/somemodel", "--data-dir", str(data_dir),
                     "-o", str(tmp_path / "out"))
    seconds = time.perf_counter() - start
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.code == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("mathtune: error:"), result.stderr
    assert "someone/somemodel" in lines[0] and "cannot be reached" in lines[0] and "--model DIR" in lines[0]
    assert seconds < 3, f"took {seconds:.1f} s"
    assert not (tmp_path / "out").exists()


def test_no_retry_chatter_reaches_the_terminal(data_dir, tmp_path):
    """A real process: huggingface_hub's `Retrying in 8s` warnings and its duplicated lines stay off stderr."""
    env = {**os.environ, "HF_ENDPOINT": CLOSED_PORT_ENDPOINT, "HF_HUB_OFFLINE": "0"}
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(name, None)
    proc = subprocess.run([console_script(), "eval", "--base", "--model", "someone/somemodel", "--data-dir",
                           str(data_dir), "-o", str(tmp_path / "out")], capture_output=True, text=True, env=env,
                          timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "cannot be reached" in lines[0], proc.stderr
