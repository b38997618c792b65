"""The app as raters reach it: Gradio's login from a users file, the rater is the logged-in user, a
double submit stores once, raters at once lose nothing (gradio_client against the served app on
127.0.0.1), and serving beyond loopback without a login is refused.

The small sibling of benchmarks/app_load.py (20 raters x 50, and a kill -9), whose helpers it uses.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

import gradio as gr
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from app_load import Tally, check_store, free_port, password_of, rater_names, run_raters, write_rating_run  # noqa: E402

RATERS = rater_names(4)


@pytest.fixture(scope="module")
def rating_run(tmp_path_factory, tiny_models, data_dir) -> Path:
    return write_rating_run(tmp_path_factory.mktemp("rating") / "run", tiny_models["llama"], data_dir, problems=14)


@pytest.fixture(scope="module")
def users_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("users") / "users.txt"
    path.write_text("# raters of the test\n" + "".join(f"{user}:{password_of(user)}\n" for user in RATERS))
    return path


@pytest.fixture
def served(rating_run, users_file, tmp_path):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from mathtune.app.ui import launch

    db = tmp_path / "ratings.sqlite"
    demo, url = launch([rating_run], None, None, db, "127.0.0.1", free_port(), block=False, auth=users_file)
    yield url, db
    demo.close()


def client(url: str, user: str, password: str | None = None):
    from gradio_client import Client

    return Client(url, auth=(user, password or password_of(user)), verbose=False, download_files=False,
                  analytics_enabled=False)


def stored(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT rater, question, output, correctness, pedagogy FROM ratings ORDER BY id").fetchall()
    conn.close()
    return rows


def test_the_rater_is_the_logged_in_user_not_the_typed_name(served):
    import httpx

    url, db = served
    ann = client(url, RATERS[0])
    question, out_a, out_b, status, *_ = ann.predict("mallory", api_name="/next_blind")
    assert "rate each output" in status
    reply = ann.predict("mallory", 5, 4, 3, 2, 1, 2, 3, 4, api_name="/submit")
    assert reply.startswith(f"Saved 2 rating(s) from {RATERS[0]}")
    assert stored(db) == [(RATERS[0], question, out_a, 5, 2), (RATERS[0], question, out_b, 1, 4)]
    # The rating download, as a logged-in user gets it, is refused to anyone not logged in.
    exported = ann.predict(api_name="/export_csv")
    assert "mallory" not in str(exported)
    file_url = exported["url"] if isinstance(exported, dict) else exported.url
    assert httpx.get(file_url, timeout=30).status_code in (401, 403)
    assert httpx.get(file_url, cookies=ann.cookies, timeout=30).text.startswith("id,created_at,rater")


def test_without_the_right_password_nothing_is_reachable(served):
    import httpx

    url, _ = served
    with pytest.raises(Exception, match="(?i)login|credentials|auth|401"):
        client(url, RATERS[1], "wrong password")
    assert httpx.get(f"{url}config", timeout=30).status_code in (401, 403)


def test_a_double_submit_is_stored_once(served):
    url, db = served
    bob = client(url, RATERS[1])
    bob.predict("", api_name="/next_blind")
    first = bob.predict("", 1, 2, 3, 4, 5, 4, 3, 2, api_name="/submit")
    again = bob.predict("", 1, 2, 3, 4, 5, 4, 3, 2, api_name="/submit")  # the same click, sent twice
    assert first.startswith("Saved 2") and again.startswith("Already saved")
    assert len(stored(db)) == 2
    with pytest.raises(Exception, match="already submitted with other scores"):  # not silently replaced
        bob.predict("", 5, 5, 5, 5, 5, 5, 5, 5, api_name="/submit")
    bob.predict("", api_name="/next_blind")  # a new comparison is a new key: stored
    assert bob.predict("", 1, 2, 3, 4, 5, 4, 3, 2, api_name="/submit").startswith("Saved 2")
    assert len(stored(db)) == 4


def test_concurrent_raters_lose_nothing_and_store_nothing_twice(served, tiny_models):
    url, db = served
    tally = Tally()
    run_raters(url, RATERS, 10, tally, 120, str(tiny_models["llama"]), solve_every=5, double_every=3)
    assert not tally.errors, tally.error_samples
    assert len(tally.acks) == 4 * 10 and tally.doubles == tally.doubles_refused == 4 * 4
    assert check_store(db, tally.acks) == []
    assert {row[0] for row in stored(db)} == set(RATERS)


# --- refusals before anything is served -----------------------------------------------------------


@pytest.fixture
def launched(monkeypatch):
    """gr.Blocks.launch recorded instead of serving: what the CLI would have served, if anything."""
    calls: list[dict] = []

    def fake_launch(self, **kwargs):
        calls.append(kwargs)
        return None, "http://fake/", None

    monkeypatch.setattr(gr.Blocks, "launch", fake_launch)
    return calls


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "myhost.example.org"])
def test_serving_beyond_loopback_without_a_login_is_refused(run_cli, launched, tiny_models, tmp_path, host):
    result = run_cli("app", "--model", str(tiny_models["llama"]), "--db", str(tmp_path / "r.sqlite"), "--host", host)
    assert result.code == 2 and not launched
    assert result.stderr.startswith(f"mathtune: error: refusing to serve on {host} without a login")
    assert len(result.stderr.strip().splitlines()) == 1 and "--insecure" in result.stderr


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_is_served_without_a_login(run_cli, launched, tiny_models, tmp_path, host):
    result = run_cli("app", "--model", str(tiny_models["llama"]), "--db", str(tmp_path / "r.sqlite"), "--host", host)
    assert result.code == 0, result.stderr
    assert launched[0]["server_name"] == host and launched[0]["auth"] is None


def test_insecure_serves_beyond_loopback_on_request(run_cli, launched, tiny_models, tmp_path):
    result = run_cli("app", "--model", str(tiny_models["llama"]), "--db", str(tmp_path / "r.sqlite"),
                     "--host", "0.0.0.0", "--insecure")
    assert result.code == 0 and launched[0]["server_name"] == "0.0.0.0"


def test_a_users_file_turns_on_the_login(run_cli, launched, tiny_models, tmp_path):
    from mathtune.app.auth import hash_password

    users = tmp_path / "users.txt"
    users.write_text(f"\n# comment\nann:plain:with colon\nbob:{hash_password('s3cret', iterations=1000)}\n")
    result = run_cli("app", "--model", str(tiny_models["llama"]), "--db", str(tmp_path / "r.sqlite"),
                     "--host", "0.0.0.0", "--auth", str(users))
    assert result.code == 0, result.stderr
    check = launched[0]["auth"]
    assert check("ann", "plain:with colon") and check("bob", "s3cret")
    assert not check("ann", "plain") and not check("bob", "S3cret") and not check("eve", "s3cret")


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist"),
    ("# only a comment\n\n", "lists no users"),
    ("ann\n", "line 1: expected 'user:password'"),
    ("ok:pw\n:pw\n", "line 2: expected 'user:password'"),
    ("ann:\n", "line 1: expected"),
    ("an n:pw\n", "line 1: a user name may not contain spaces"),
    ("ann:pw\nann:other\n", "line 2: user 'ann' is listed twice"),
    ("ann:pbkdf2_sha256$10$zz$00\n", "line 1: a malformed pbkdf2_sha256 hash"),
    (b"ann:\xff\xfe\n", "cannot read the users file"),
])
def test_a_bad_users_file_is_refused_in_one_line(run_cli, launched, tiny_models, tmp_path, content, message):
    users = tmp_path / "users.txt"
    if isinstance(content, bytes):
        users.write_bytes(content)
    elif content is not None:
        users.write_text(content)
    result = run_cli("app", "--model", str(tiny_models["llama"]), "--db", str(tmp_path / "r.sqlite"),
                     "--auth", str(users))
    assert result.code == 2 and not launched
    assert result.stderr.startswith("mathtune: error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
