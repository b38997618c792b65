"""Human ratings of model outputs in SQLite: add, list, export CSV, summarise with rater agreement.

One row per (rater, output) rating; the output itself is stored with the rating, so the database
alone says what was rated. A new connection per call keeps the store safe to use from the app's
worker threads; SQLite serialises the writes.
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
    pedagogy INTEGER NOT NULL CHECK (pedagogy BETWEEN 1 AND 5)
);
CREATE INDEX IF NOT EXISTS ratings_item ON ratings (item_id);
"""


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
            conn.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        try:
            return closing(sqlite3.connect(self.path, timeout=10))  # type: ignore[return-value]
        except sqlite3.Error as exc:
            raise MathtuneError(f"cannot open the ratings database {self.path}: {exc}") from None

    def add(self, rating: Rating) -> int:
        row = asdict(rating) | {
            "rater": rating.rater.strip(),
            "created_at": datetime.now(UTC).isoformat(),
            "item_id": item_id(rating.model, rating.question, rating.output),
        }
        columns = ", ".join(row)
        with self._connect() as conn, conn:
            cursor = conn.execute(
                f"INSERT INTO ratings ({columns}) VALUES ({', '.join('?' * len(row))})", tuple(row.values())
            )
            return int(cursor.lastrowid)

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
