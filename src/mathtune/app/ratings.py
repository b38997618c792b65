"""Human ratings of model outputs in SQLite: add, list, export CSV, summarise with rater agreement.

One row per (rater, output) rating; the output itself is stored with the rating, so the database
alone says what was rated. A new connection per call keeps the store safe to use from the app's
worker threads; SQLite serialises the writes.

Shared by many raters at once: the file is in WAL mode (readers never block the writer), each
`add`/`add_all` is one `BEGIN IMMEDIATE` transaction committed with `synchronous=FULL` (a rating
acknowledged to a rater survives a kill -9 of the app), and a rating may carry a `request_key`
(UNIQUE): the app gives every comparison it shows a fresh key, so a double click or a client's retry
of the same submission finds its rows already there instead of storing them twice.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import sqlite3
from collections import defaultdict
from contextlib import closing
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mathtune.app.agreement import krippendorff_alpha, mean_pairwise_kappa
from mathtune.errors import MathtuneError
from mathtune.io import atomic_write_text

CRITERIA = ("correctness", "coherence", "readability", "pedagogy")
SCHEMA = """
CREATE TABLE IF NOT EXISTS ratings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    rater TEXT NOT NULL,
    item_id TEXT NOT NULL,        -- hash of (model, question, output): the unit raters agree on
    problem_id TEXT NOT NULL,
    model TEXT NOT NULL,
    question TEXT NOT NULL,
    output TEXT NOT NULL,
    correctness INTEGER NOT NULL CHECK (correctness BETWEEN 1 AND 5),
    coherence INTEGER NOT NULL CHECK (coherence BETWEEN 1 AND 5),
    readability INTEGER NOT NULL CHECK (readability BETWEEN 1 AND 5),
    pedagogy INTEGER NOT NULL CHECK (pedagogy BETWEEN 1 AND 5),
    request_key TEXT              -- idempotency key of the submission (NULL: none given)
);
CREATE INDEX IF NOT EXISTS ratings_item ON ratings (item_id);
"""
# Separate from SCHEMA: a database made before request_key existed gets the column first.
KEY_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS ratings_request_key ON ratings (request_key)"
BUSY_TIMEOUT_S = 30  # many raters at once: a writer waits this long for the lock before failing


def item_id(model: str, question: str, output: str) -> str:
    return hashlib.sha256(f"{model}\x00{question}\x00{output}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Rating:
    rater: str
    problem_id: str
    model: str
    question: str
    output: str
    correctness: int
    coherence: int
    readability: int
    pedagogy: int

    def __post_init__(self) -> None:
        if not self.rater.strip():
            raise MathtuneError("a rating needs a rater name")
        for name in CRITERIA:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
                raise MathtuneError(f"{name} must be a whole number from 1 to 5, got {value!r}")


class RatingStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            try:
                conn.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file itself
                conn.execute("BEGIN IMMEDIATE")
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                columns = {row[1] for row in conn.execute("PRAGMA table_info(ratings)")}
                if "request_key" not in columns:  # made by an older mathtune
                    conn.execute("ALTER TABLE ratings ADD COLUMN request_key TEXT")
                conn.execute(KEY_INDEX)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise MathtuneError(f"cannot use the ratings database {self.path}: {exc}") from None

    def _connect(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: no implicit transactions; each write opens its own BEGIN IMMEDIATE.
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.execute("PRAGMA synchronous=FULL")  # WAL's default (NORMAL) may lose the last commits on power loss
        except sqlite3.Error as exc:
            raise MathtuneError(f"cannot open the ratings database {self.path}: {exc}") from None
        return closing(conn)  # type: ignore[return-value]

    def add(self, rating: Rating, request_key: str | None = None) -> int:
        """Store one rating in its own transaction; the id of its row (the earlier row for a key seen before)."""
        return self.add_all([(rating, request_key)])[0][0]

    def add_all(self, ratings: list[tuple[Rating, str | None]]) -> list[tuple[int, bool]]:
        """Store the ratings of one submission in one transaction: all or none. For each, its row id and
        whether it is new (False: its request key was stored before, with the same rating)."""
        results = []
        with self._connect() as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
                for rating, key in ratings:
                    results.append(_insert(conn, rating, key))
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise MathtuneError(f"could not save the rating in {self.path}: {exc}") from None
                raise
        return results

    def rows(self) -> list[dict[str, Any]]:
        with self._connect() as conn:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute("SELECT * FROM ratings ORDER BY id")]

    def rated_items(self, rater: str) -> set[str]:
        with self._connect() as conn:
            return {r[0] for r in conn.execute("SELECT item_id FROM ratings WHERE rater = ?", (rater.strip(),))}

    def to_csv(self) -> str:
        buffer = io.StringIO()
        names = ["id", "created_at", "rater", "item_id", *(f.name for f in fields(Rating) if f.name != "rater")]
        writer = csv.DictWriter(buffer, fieldnames=names, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows())
        return buffer.getvalue()

    def export_csv(self, path: str | Path) -> Path:
        atomic_write_text(path, self.to_csv())
        return Path(path)

    def summary(self) -> dict[str, Any]:
        """Per model: count and mean of each criterion; per criterion: agreement between raters."""
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        for row in self.rows():  # a rater who rated an output twice counts once, with the later rating
            latest[(row["rater"], row["item_id"])] = row
        by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in latest.values():
            by_model[row["model"]].append(row)
        models = {
            model: {
                "n": len(rows),
                "raters": len({r["rater"] for r in rows}),
                **{c: sum(r[c] for r in rows) / len(rows) for c in CRITERIA},
            }
            for model, rows in sorted(by_model.items())
        }
        return {
            "models": models,
            "agreement": {c: _agreement(latest.values(), c) for c in CRITERIA},
            "ratings": len(latest),
            "raters": len({rater for rater, _ in latest}),
        }


def _insert(conn: sqlite3.Connection, rating: Rating, key: str | None) -> tuple[int, bool]:
    """Inside the caller's write transaction, so nobody can store the same key between the look-up and
    the insert (the UNIQUE index would refuse it anyway). Looked up first rather than `ON CONFLICT DO
    NOTHING`, which would use up an AUTOINCREMENT id per retry."""
    row = asdict(rating) | {
        "rater": rating.rater.strip(),
        "created_at": datetime.now(UTC).isoformat(),
        "item_id": item_id(rating.model, rating.question, rating.output),
        "request_key": key,
    }
    if key is not None:
        conn.row_factory = sqlite3.Row
        earlier = conn.execute("SELECT * FROM ratings WHERE request_key = ?", (key,)).fetchone()
        conn.row_factory = None
        if earlier is not None:
            if any(earlier[name] != row[name] for name in ("rater", "item_id", *CRITERIA)):
                raise MathtuneError(
                    "this comparison was already submitted with other scores or by another rater; "
                    "click 'Next problem' for another"
                )
            return int(earlier["id"]), False
    columns = ", ".join(row)
    cursor = conn.execute(f"INSERT INTO ratings ({columns}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
    return int(cursor.lastrowid), True


def _agreement(rows: Any, criterion: str) -> dict[str, Any]:
    units: dict[str, list[int]] = defaultdict(list)
    by_rater: dict[str, dict[str, int]] = defaultdict(dict)
    for row in rows:
        units[row["item_id"]].append(row[criterion])
        by_rater[row["rater"]][row["item_id"]] = row[criterion]
    shared = sum(1 for values in units.values() if len(values) >= 2)
    alpha = krippendorff_alpha(list(units.values()), "interval")
    kappa = mean_pairwise_kappa(by_rater)
    return {
        "items_rated_by_2plus": shared,
        "krippendorff_alpha": None if math.isnan(alpha) else alpha,
        "mean_pairwise_qwk": None if math.isnan(kappa) else kappa,
    }
