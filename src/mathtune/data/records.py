"""Reading JSONL/JSON/CSV rows with errors that name the file and line."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from mathtune.errors import MathtuneError

MAX_LINE_BYTES = 1_000_000  # a GSM8K row is ~1 KB; a megabyte line is corrupt input, not a problem


def _data_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MathtuneError(f"data file not found: {path}")
    return path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = _data_file(path)
    rows: list[dict[str, Any]] = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if len(raw) > MAX_LINE_BYTES:
                raise MathtuneError(f"{path}:{number}: line longer than {MAX_LINE_BYTES} bytes")
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise MathtuneError(f"{path}:{number}: not UTF-8 text") from None
            except json.JSONDecodeError as exc:
                raise MathtuneError(f"{path}:{number}: malformed JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise MathtuneError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    if not rows:
        raise MathtuneError(f"data file {path} holds no rows")
    return rows


def read_json_list(path: str | Path) -> list[dict[str, Any]]:
    path = _data_file(path)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise MathtuneError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise MathtuneError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise MathtuneError(f"{path}: expected a non-empty JSON list of objects")
    return rows


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    path = _data_file(path)
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise MathtuneError(f"{path}: unreadable CSV ({exc})") from None
    if not rows:
        raise MathtuneError(f"data file {path} holds no rows")
    return rows


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl, .json (list) or .csv file, chosen by suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return read_csv(path)
    if suffix == ".json":
        return read_json_list(path)
    return read_jsonl(path)
