"""Reading JSONL/JSON/CSV rows, as common tools save them, with errors that name `path:line`.

Encoding policy, the same for every data file (`read_text`):
- A byte-order mark decides: UTF-8 (Excel "CSV UTF-8"), UTF-16 LE or BE (Excel "Unicode text",
  Windows PowerShell `>`). The mark is dropped.
- Without one: UTF-8 when the bytes are valid UTF-8. Otherwise Windows-1252 (Excel's plain "CSV" on
  Windows, Notepad's "ANSI"), with a warning naming the file, unless the file also holds valid
  multi-byte UTF-8: such a file mixes two encodings, and reading it as Windows-1252 would garble
  its UTF-8 text ("café" -> "cafÃ©") without a word, so it is an error at the first non-UTF-8 line.
- NUL bytes without a mark (UTF-16 saved without one) and bytes no encoding here maps are errors.
Lines end at \\n, \\r\\n or a lone \\r (old Mac exports); the last line needs no line end.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mathtune.errors import MathtuneError

log = logging.getLogger("mathtune")

MAX_LINE_CHARS = 1_000_000  # a GSM8K row is ~1 KB; a megabyte line is corrupt input, not a problem
LEGACY_ENCODING = "cp1252"  # Windows-1252: what Windows tools write when they write no Unicode
BYTE_ORDER_MARKS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
LINE_BREAK = re.compile(r"\r\n|\r|\n")
_JSON_SEPARATORS = re.compile(r"[\s,]*")


class Records(list[dict[str, Any]]):
    """A file's rows, each with the physical line it starts on, so a bad row is reported as
    `path:line`. A list, so callers that want rows alone need not change."""

    def __init__(self, path: Path, rows: list[dict[str, Any]], lines: list[int], items: bool = False) -> None:
        super().__init__(rows)
        self.path, self.lines, self.items = path, lines, items

    def where(self, index: int) -> str:
        # A JSON list may sit on one line; its item number tells its rows apart there.
        place = f"{self.path}:{self.lines[index]}"
        return f"{place} (item {index + 1})" if self.items else place


def row_locator(rows: list[dict[str, Any]], source: str) -> Callable[[int], str]:
    """`where(index)` for a row's error: `path:line` for rows read from a file, else `source row N`
    (hub rows have no file or line)."""
    if isinstance(rows, Records):
        return rows.where
    return lambda index: f"{source} row {index + 1}"


def _line_of(before: str) -> int:
    return len(LINE_BREAK.findall(before)) + 1


def _decode_marked(path: Path, body: bytes, encoding: str) -> str:
    """`body` (what follows a byte-order mark) in the encoding the mark names; no fallback, as the
    mark is the file's own word on its encoding."""
    try:
        return body.decode(encoding)
    except UnicodeDecodeError as exc:
        line = _line_of(body[: exc.start].decode(encoding, errors="replace"))
        name = encoding.upper().removesuffix("-LE").removesuffix("-BE")
        raise MathtuneError(f"{path}:{line}: not valid {name} text, though the file starts with a {name} "
                            "byte-order mark") from None


def _not_utf8(path: Path, data: bytes, exc: UnicodeDecodeError, why: str) -> MathtuneError:
    line = _line_of(data[: exc.start].decode("utf-8"))  # valid UTF-8 up to there
    return MathtuneError(f"{path}:{line}: not UTF-8 text{why}; re-save it as UTF-8")


def _decode_legacy(path: Path, data: bytes, exc: UnicodeDecodeError) -> str:
    # Non-ASCII left once the bad bytes are dropped is valid multi-byte UTF-8: a file of two encodings.
    if not data.decode("utf-8", errors="ignore").isascii():
        raise _not_utf8(path, data, exc, ", though other lines are (two encodings in one file)")
    try:
        text = data.decode(LEGACY_ENCODING)
    except UnicodeDecodeError:
        raise _not_utf8(path, data, exc, " nor Windows-1252") from None
    log.warning("%s: not UTF-8, read as Windows-1252 (Excel's CSV on Windows); re-save it as UTF-8 to be sure",
                path)
    return text


def decode_text(path: Path, data: bytes, legacy: bool = True) -> str:
    """`data` as text by the policy in this module's docstring; `legacy=False` accepts Unicode only."""
    for mark, encoding in BYTE_ORDER_MARKS:
        if data.startswith(mark):
            return _decode_marked(path, data[len(mark):], encoding)
    if b"\0" in data:
        line = _line_of(data[: data.index(b"\0")].decode("latin-1"))
        raise MathtuneError(f"{path}:{line}: NUL bytes: UTF-16 without a byte-order mark? re-save it as UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if not legacy:
            raise _not_utf8(path, data, exc, " (nor UTF-16 with a byte-order mark)") from None
        return _decode_legacy(path, data, exc)


def read_text(path: str | Path, legacy: bool = True) -> str:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MathtuneError(f"cannot read {path}: {exc.strerror}") from None
    return decode_text(path, data, legacy)


def _data_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MathtuneError(f"data file not found: {path}")
    return path


def _records(path: Path, rows: list[dict[str, Any]], lines: list[int], items: bool = False) -> Records:
    if not rows:
        raise MathtuneError(f"data file {path} holds no rows")
    return Records(path, rows, lines, items)


def _json_object(path: Path, number: int, line: str) -> dict[str, Any]:
    if len(line) > MAX_LINE_CHARS:
        raise MathtuneError(f"{path}:{number}: line longer than {MAX_LINE_CHARS} characters")
    try:
        row = json.loads(line.lstrip("\ufeff"))  # `cat a.jsonl b.jsonl` leaves b's byte-order mark mid-file
    except json.JSONDecodeError as exc:
        raise MathtuneError(f"{path}:{number}: malformed JSON ({exc.msg})") from None
    except (ValueError, RecursionError) as exc:  # a 5,000-digit number, arrays nested 1,000 deep
        raise MathtuneError(f"{path}:{number}: unreadable JSON ({exc})") from None
    if not isinstance(row, dict):
        raise MathtuneError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
    return row


def read_jsonl(path: str | Path) -> Records:
    """One JSON object a line; blank and whitespace-only lines are skipped but counted."""
    path = _data_file(path)
    rows, lines = [], []
    for number, line in enumerate(LINE_BREAK.split(read_text(path)), start=1):
        if line.strip():
            rows.append(_json_object(path, number, line))
            lines.append(number)
    return _records(path, rows, lines)


def _item_lines(text: str) -> list[int]:
    """The line each item of a valid top-level JSON list starts on: a second pass, one raw_decode an
    item, which costs about what the parse did."""
    decoder, lines = json.JSONDecoder(), []
    pos, line, counted = text.index("[") + 1, 1, 0
    while True:
        pos = _JSON_SEPARATORS.match(text, pos).end()  # the document is valid: only ',' and blanks here
        if text[pos] == "]":
            return lines
        line, counted = line + text.count("\n", counted, pos), pos
        lines.append(line)
        _, pos = decoder.raw_decode(text, pos)


def read_json_list(path: str | Path) -> Records:
    path = _data_file(path)
    # JSON allows a raw CR only between tokens, so one line end there keeps the parser's lineno right.
    text = LINE_BREAK.sub("\n", read_text(path))
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MathtuneError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    except (ValueError, RecursionError) as exc:
        raise MathtuneError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(rows, list):
        raise MathtuneError(f"{path}: expected a JSON list of objects, got {type(rows).__name__}")
    lines = _item_lines(text)
    for row, line in zip(rows, lines, strict=True):
        if not isinstance(row, dict):
            raise MathtuneError(f"{path}:{line}: expected a JSON object, got {type(row).__name__}")
    return _records(path, rows, lines, items=True)


def _delimiter(text: str) -> str:
    """The header line's most frequent of ',', ';' and tab (',' on a tie): European Excel writes ';',
    Excel "Unicode text" tabs. The header decides, not csv.Sniffer over data rows, whose text
    ("1,000 apples") holds commas in ';' files."""
    header = next((line for line in io.StringIO(text, newline="") if line.strip()), "")
    return max(",;\t", key=header.count)


def _csv_records(reader: Any) -> Iterator[tuple[int, list[str]]]:
    """(line the record starts on, cells) for each record with a non-blank cell; Excel writes rows
    of empty cells below the data."""
    start = 1
    for cells in reader:
        if any(cell.strip() for cell in cells):
            yield start, cells
        start = reader.line_num + 1  # line_num: lines read so far, a quoted field's line breaks too


def _csv_row(path: Path, line: int, names: list[str], cells: list[str], delimiter: str) -> dict[str, str]:
    if any(cell.strip() for cell in cells[len(names):]):
        raise MathtuneError(f"{path}:{line}: more cells than the header's {len(names)} columns "
                            f"(quote text that holds {delimiter!r})")
    cells = cells + [""] * (len(names) - len(cells))
    # Empty header names are Excel's trailing empty columns; a line end inside a quoted field is
    # "\n" whatever the file's line ends were.
    return {name: LINE_BREAK.sub("\n", cell) for name, cell in zip(names, cells, strict=False) if name}


def read_csv(path: str | Path) -> Records:
    """A header line, then one row a record; delimiter ',', ';' or tab (`_delimiter`)."""
    path = _data_file(path)
    text = read_text(path)
    delimiter = _delimiter(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        records = list(_csv_records(reader))
    except csv.Error as exc:
        raise MathtuneError(f"{path}:{reader.line_num}: unreadable CSV ({exc})") from None
    if not records:
        raise MathtuneError(f"data file {path} holds no rows")
    names = [name.strip() for name in records[0][1]]
    rows = [_csv_row(path, line, names, cells, delimiter) for line, cells in records[1:]]
    return _records(path, rows, [line for line, _ in records[1:]])


def read_records(path: str | Path) -> Records:
    """Rows of a .jsonl, .json (list) or .csv file, chosen by suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return read_csv(path)
    if suffix == ".json":
        return read_json_list(path)
    return read_jsonl(path)
