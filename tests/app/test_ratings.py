"""The SQLite rating store: validation, persistence, CSV export, per-model summary with agreement."""

import csv
import io

import pytest

from mathtune.app.ratings import Rating, RatingStore, item_id
from mathtune.errors import MathtuneError


def rating(rater: str, model: str, output: str, *scores: int) -> Rating:
    return Rating(rater, "p1", model, "What is 2 + 2?", output, *scores)


def test_ratings_persist_and_export_as_csv(tmp_path):
    store = RatingStore(tmp_path / "r.sqlite")
    store.add(rating("ann", "base", "4, with a comma, and \"quotes\"", 5, 4, 3, 2))
    again = RatingStore(tmp_path / "r.sqlite")  # a new store on the same file sees the row
    rows = again.rows()
    assert len(rows) == 1 and rows[0]["rater"] == "ann" and rows[0]["correctness"] == 5
    assert rows[0]["item_id"] == item_id("base", "What is 2 + 2?", "4, with a comma, and \"quotes\"")
    parsed = list(csv.DictReader(io.StringIO(again.to_csv())))
    assert parsed[0]["output"] == "4, with a comma, and \"quotes\"" and parsed[0]["pedagogy"] == "2"
    assert again.export_csv(tmp_path / "x.csv").read_text() == again.to_csv()
    assert again.rated_items(" ann ") == {rows[0]["item_id"]}


@pytest.mark.parametrize("scores", [(0, 3, 3, 3), (3, 6, 3, 3), (3, 3, 2.5, 3), (3, 3, 3, True)])
def test_out_of_range_scores_are_refused(scores):
    with pytest.raises(MathtuneError, match="from 1 to 5"):
        rating("ann", "base", "x", *scores)


def test_a_rater_name_is_required():
    with pytest.raises(MathtuneError, match="rater name"):
        rating("  ", "base", "x", 3, 3, 3, 3)


def test_summary_means_per_model_and_agreement(tmp_path):
    store = RatingStore(tmp_path / "r.sqlite")
    # two raters, three tuned outputs; correctness ratings ann 1,2,3 and bob 1,2,2 (kappa 2/3 by hand)
    for out, a, b in (("o1", 1, 1), ("o2", 2, 2), ("o3", 3, 2)):
        store.add(rating("ann", "tuned", out, a, 4, 4, 4))
        store.add(rating("bob", "tuned", out, b, 4, 4, 4))
    store.add(rating("ann", "base", "o4", 5, 1, 1, 1))
    store.add(rating("ann", "base", "o4", 3, 1, 1, 1))  # re-rated: the later rating counts
    summary = store.summary()
    assert summary["ratings"] == 7 and summary["raters"] == 2
    assert summary["models"]["base"] == {"n": 1, "raters": 1, "correctness": 3, "coherence": 1,
                                         "readability": 1, "pedagogy": 1}
    assert summary["models"]["tuned"]["correctness"] == pytest.approx(11 / 6)
    agree = summary["agreement"]["correctness"]
    assert agree["items_rated_by_2plus"] == 3
    assert agree["mean_pairwise_qwk"] == pytest.approx(2 / 3)
    # alpha by hand on units {1,1} {2,2} {3,2} plus the single-rated {3} (not pairable):
    # D_o = 2 * 1 / 6 = 1/3; values 1,1,2,2,3,2: six 1-2 pairs (1 each), two 1-3 pairs (4 each),
    # three 2-3 pairs (1 each) sum to 17, D_e = 2 * 17 / 30 = 17/15; alpha = 1 - (1/3) / (17/15) = 12/17
    assert agree["krippendorff_alpha"] == pytest.approx(12 / 17)
    assert summary["agreement"]["coherence"]["krippendorff_alpha"] is None  # all 4s: undefined


def test_the_store_is_in_wal_mode_and_a_request_key_stores_once(tmp_path):
    import sqlite3

    store = RatingStore(tmp_path / "r.sqlite")
    first = rating("ann", "base", "x", 3, 3, 3, 3)
    assert store.add_all([(first, "k/A"), (rating("ann", "tuned", "y", 2, 2, 2, 2), "k/B")]) == [(1, True), (2, True)]
    assert store.add_all([(first, "k/A")]) == [(1, False)]  # a retry: the earlier row, nothing new
    with pytest.raises(MathtuneError, match="already submitted with other scores"):
        store.add(rating("ann", "base", "x", 5, 3, 3, 3), "k/A")
    assert store.add(first) == 3  # no key: a second rating of the same output is a new row
    with sqlite3.connect(tmp_path / "r.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        with pytest.raises(sqlite3.IntegrityError):  # the UNIQUE index backs the look-up
            conn.execute("INSERT INTO ratings (created_at, rater, item_id, problem_id, model, question, output, "
                         "correctness, coherence, readability, pedagogy, request_key) "
                         "VALUES ('t', 'bob', 'i', 'p', 'm', 'q', 'o', 1, 1, 1, 1, 'k/A')")
    conn.close()


def test_a_submission_is_all_or_nothing_and_an_old_database_gains_the_key(tmp_path):
    import sqlite3

    db = tmp_path / "old.sqlite"
    with sqlite3.connect(db) as conn:  # the schema before request keys
        conn.executescript("CREATE TABLE ratings (id INTEGER PRIMARY KEY AUTOINCREMENT, created_at TEXT NOT NULL, "
                           "rater TEXT NOT NULL, item_id TEXT NOT NULL, problem_id TEXT NOT NULL, model TEXT NOT NULL,"
                           " question TEXT NOT NULL, output TEXT NOT NULL, correctness INTEGER NOT NULL, coherence "
                           "INTEGER NOT NULL, readability INTEGER NOT NULL, pedagogy INTEGER NOT NULL);")
    conn.close()
    store = RatingStore(db)
    store.add(rating("ann", "base", "x", 3, 3, 3, 3), "k/A")
    with pytest.raises(MathtuneError, match="already submitted"):  # the second rating fails: neither is stored
        store.add_all([(rating("bob", "base", "z", 1, 1, 1, 1), "k/Z"),
                       (rating("ann", "base", "x", 1, 1, 1, 1), "k/A")])
    assert [r["rater"] for r in store.rows()] == ["ann"]
