"""Data and config files as common tools save them: BOMs, UTF-16, Windows-1252, CRLF/CR line ends,
European-Excel CSV; and every bad row named as `path:line` (the physical line it starts on)."""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
from pathlib import Path

import pytest

from mathtune.config import build_config, read_yaml
from mathtune.data.hub_sets import load_hub_set
from mathtune.data.problems import Problem, load_split, problems_from_rows
from mathtune.errors import MathtuneError

# "café" and "€" exist in UTF-8, UTF-16 and Windows-1252 alike; the multi-line answer exercises a
# quoted CSV field that spans lines.
ROWS = [
    {"id": "1", "question": "A café sells tea for €5. How much for 2 teas?", "answer": "2 * 5 = 10\n#### 10"},
    {"id": "2", "question": "Half of 9?", "answer": "#### 4.5"},
]
ENCODINGS = {
    "utf-8": lambda text: text.encode("utf-8"),
    "utf-8-bom": lambda text: text.encode("utf-8-sig"),  # Excel "CSV UTF-8"
    "utf-16": lambda text: text.encode("utf-16"),  # BOM + native order (LE here), PowerShell `>`
    "utf-16-le-bom": lambda text: codecs.BOM_UTF16_LE + text.encode("utf-16-le"),  # Excel "Unicode text"
    "utf-16-be-bom": lambda text: codecs.BOM_UTF16_BE + text.encode("utf-16-be"),
    "cp1252": lambda text: text.encode("cp1252"),  # Excel "CSV" on Windows, Notepad "ANSI"
}
NEWLINES = {"lf": "\n", "crlf": "\r\n", "cr": "\r"}


def _jsonl(rows: list[dict], newline: str, final: bool = True) -> str:
    # A blank and a whitespace-only line in the middle: skipped, but still counted as lines.
    lines = [json.dumps(rows[0], ensure_ascii=False), "", "  \t", *(json.dumps(r, ensure_ascii=False)
                                                                   for r in rows[1:])]
    return newline.join(lines) + (newline if final else "")


def _json(rows: list[dict], newline: str, final: bool = True) -> str:
    return json.dumps(rows, ensure_ascii=False, indent=2).replace("\n", newline) + (newline if final else "")


def _csv(rows: list[dict], newline: str, final: bool = True, delimiter: str = ",") -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), delimiter=delimiter, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    # A Windows editor converts every line end, those inside quoted fields too.
    text = buffer.getvalue().replace("\n", newline)
    return text if final else text.removesuffix(newline)


FORMATS = {"jsonl": _jsonl, "json": _json, "csv": _csv}


def _load(path: Path) -> list[Problem]:
    cfg = build_config({"data": {"dataset": "jsonl", "test_file": str(path)}})
    return load_split(cfg.data, None, "test")


@pytest.fixture
def expected(tmp_path) -> list[Problem]:
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes("".join(json.dumps(r) + "\n" for r in ROWS).encode("utf-8"))
    problems = _load(plain)
    assert [p.answer for p in problems] == ["10", "4.5"]
    return problems


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize("newline", sorted(NEWLINES))
def test_every_encoding_and_line_end_reads_like_plain_utf8(tmp_path, expected, fmt, encoding, newline):
    path = tmp_path / f"data.{fmt}"
    path.write_bytes(ENCODINGS[encoding](FORMATS[fmt](ROWS, NEWLINES[newline])))
    assert _load(path) == expected


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("newline", sorted(NEWLINES))
def test_missing_final_newline(tmp_path, expected, fmt, newline):
    path = tmp_path / f"data.{fmt}"
    path.write_bytes(FORMATS[fmt](ROWS, NEWLINES[newline], final=False).encode("utf-8"))
    assert _load(path) == expected


@pytest.mark.parametrize(("delimiter", "encoding"), [(";", "utf-8-bom"), (";", "cp1252"), ("\t", "utf-16")])
def test_csv_semicolon_and_tab_delimiters(tmp_path, expected, delimiter, encoding):
    # European Excel writes ';' (',' is the decimal mark there); Excel "Unicode text" is UTF-16 with tabs.
    path = tmp_path / "data.csv"
    rows = [*ROWS, {"id": "3", "question": "What is 1,000 plus 1?", "answer": "1,001"}]
    path.write_bytes(ENCODINGS[encoding](_csv(rows, "\r\n", delimiter=delimiter)))
    problems = _load(path)
    assert problems[:2] == expected
    assert (problems[2].question, problems[2].answer) == ("What is 1,000 plus 1?", "1001")


def test_csv_trailing_empty_columns_and_rows(tmp_path, expected):
    # Excel exports a sheet's used range: empty columns to the right, empty rows below.
    text = ('id,question,answer,,\r\n1,A café sells tea for €5. How much for 2 teas?,"2 * 5 = 10\r\n#### 10",,\r\n'
            ",,,,\r\n2,Half of 9?,#### 4.5,,\r\n,,,,\r\n,,,,\r\n")
    path = tmp_path / "data.csv"
    path.write_text(text, encoding="utf-8", newline="")
    assert _load(path) == expected


def test_cp1252_fallback_is_logged_with_the_file(tmp_path, expected, caplog):
    path = tmp_path / "excel.csv"
    path.write_bytes(_csv(ROWS, "\r\n").encode("cp1252"))
    with caplog.at_level(logging.WARNING, logger="mathtune"):
        assert _load(path) == expected
    assert any(str(path) in r.getMessage() and "Windows-1252" in r.getMessage() for r in caplog.records)


# --- bad rows are named path:line --------------------------------------------------------------


def _raises_at(path: Path, line: int, *fragments: str) -> None:
    with pytest.raises(MathtuneError) as caught:
        _load(path)
    message = str(caught.value)
    assert f"{path}:{line}:" in message or f"{path}:{line} " in message, message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("newline", sorted(NEWLINES))
def test_jsonl_bad_row_after_blank_line_names_physical_line(tmp_path, newline):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(ROWS[0])
    path.write_bytes(NEWLINES[newline].join([good, good, "", '{"question": "no answer here"}', good]).encode())
    _raises_at(path, 4, "missing field", "answer")


@pytest.mark.parametrize("newline", sorted(NEWLINES))
def test_jsonl_malformed_line_names_physical_line(tmp_path, newline):
    path = tmp_path / "broken.jsonl"
    path.write_bytes(NEWLINES[newline].join([json.dumps(ROWS[0]), "   ", "{broken"]).encode("utf-16"))
    _raises_at(path, 3, "malformed JSON")


@pytest.mark.parametrize("newline", sorted(NEWLINES))
def test_csv_bad_row_after_multiline_field_names_its_start_line(tmp_path, newline):
    # header = line 1, first row spans lines 2-3 (quoted answer with a line break), bad row = line 4
    rows = [ROWS[0], {"id": "2", "question": "How many?", "answer": "lots"}]
    path = tmp_path / "bad.csv"
    path.write_bytes(_csv(rows, NEWLINES[newline]).encode("utf-8-sig"))
    _raises_at(path, 4, "no numeric answer")


def test_csv_missing_column_names_the_first_data_line(tmp_path):
    path = tmp_path / "cols.csv"
    path.write_bytes("\ufeffq,a\r\n3 times 4?,12\r\n".encode())
    cfg = build_config({"data": {"dataset": "jsonl", "test_file": str(path), "question_field": "question"}})
    with pytest.raises(MathtuneError, match=f"{path}:2: missing field"):
        load_split(cfg.data, None, "test")


def test_csv_row_with_more_cells_than_header(tmp_path):
    # An unquoted comma in the text shifts the cells: refuse rather than read "000 plus 1?" as the answer.
    path = tmp_path / "shift.csv"
    path.write_text("question,answer\n3 times 4?,12\nWhat is 1,000 plus 1?,1001\n", encoding="utf-8")
    _raises_at(path, 3, "more cells")


def test_json_list_bad_item_names_its_line(tmp_path):
    path = tmp_path / "bad.json"
    text = '[\r\n  {"question": "q?", "answer": "#### 1"},\r\n\r\n  {"question": "no answer"}\r\n]\r\n'
    path.write_bytes(text.encode("utf-8-sig"))
    _raises_at(path, 4, "item 2", "missing field")


def test_json_list_non_object_item_names_its_line(tmp_path):
    path = tmp_path / "list.json"
    path.write_text('[\n  {"question": "q?", "answer": "#### 1"},\n  [1, 2]\n]\n', encoding="utf-8")
    _raises_at(path, 3, "JSON object")


def test_svamp_bad_item_names_line(tmp_path):
    rows = [{"ID": "a", "Body": "Dan has 3 pens.", "Question": "How many?", "Equation": "3", "Answer": 3.0},
            {"ID": "b", "Body": "x"}]
    (tmp_path / "svamp").mkdir()
    path = tmp_path / "svamp" / "SVAMP.json"
    path.write_bytes(json.dumps(rows, indent=4).replace("\n", "\r\n").encode("utf-16"))
    cfg = build_config({"data": {"dataset": "svamp", "data_dir": str(tmp_path), "svamp_test": "all"}})
    line = [n for n, text in enumerate(json.dumps(rows, indent=4).splitlines(), start=1) if text == "    {"][1]
    with pytest.raises(MathtuneError, match=rf"SVAMP.json:{line} \(item 2\): bad or missing SVAMP field"):
        load_split(cfg.data, cfg.resolved_data_dir(), "test")


def test_math_and_arc_bad_rows_name_lines(tmp_path):
    math = tmp_path / "math.jsonl"
    good = json.dumps({"problem": "2+2?", "solution": "\\boxed{4}"})
    math.write_bytes(f"{good}\r\n\r\n{json.dumps({'problem': 'p', 'solution': 'no box'})}\r\n".encode("utf-8-sig"))
    with pytest.raises(MathtuneError, match=f"{math}:3: solution has no"):
        load_hub_set("math", "test", math)
    arc = tmp_path / "arc.jsonl"
    row = {"id": "x", "question": "Which?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "A"}
    arc.write_bytes(f"{json.dumps(row)}\r{json.dumps({**row, 'answerKey': 'E'})}".encode("utf-16"))
    with pytest.raises(MathtuneError, match=f"{arc}:2: answerKey 'E'"):
        load_hub_set("arc-challenge", "test", arc)


def test_non_text_and_unparsable_values_are_errors_not_tracebacks(tmp_path):
    math = tmp_path / "null.jsonl"
    math.write_text(json.dumps({"problem": "p", "solution": "\\boxed{1}"}) + "\n" +
                    json.dumps({"problem": "p", "solution": None}) + "\n", encoding="utf-8")
    with pytest.raises(MathtuneError, match=f"{math}:2: MATH fields"):
        load_hub_set("math", "test", math)
    deep = tmp_path / "deep.jsonl"
    deep.write_text(json.dumps(ROWS[0]) + "\n" + "[" * 100_000 + "\n", encoding="utf-8")
    _raises_at(deep, 2, "JSON")


def test_rows_without_a_file_keep_row_numbers():
    with pytest.raises(MathtuneError, match="openai/gsm8k test row 2: missing field"):
        problems_from_rows([ROWS[0], {"question": "q"}], "openai/gsm8k test")


# --- bytes that are no accepted encoding ---------------------------------------------------------


def test_bytes_neither_utf8_nor_cp1252_name_the_line(tmp_path):
    path = tmp_path / "junk.jsonl"
    good = json.dumps(ROWS[0]).encode()
    path.write_bytes(good + b"\n\n" + b'{"question": "caf\x81?", "answer": "#### 1"}\n')
    _raises_at(path, 3, "not UTF-8")


def test_utf8_file_with_one_cp1252_line_is_refused_not_garbled(tmp_path):
    # Decoding it all as Windows-1252 would turn the UTF-8 "café" on line 1 into "cafÃ©".
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps(ROWS[0], ensure_ascii=False).encode("utf-8"),
             json.dumps(ROWS[1] | {"question": "Half of 9 €?"}, ensure_ascii=False).encode("cp1252")]
    path.write_bytes(b"\r\n".join(lines))
    _raises_at(path, 2, "not UTF-8")


def test_utf16_without_bom_is_named(tmp_path):
    path = tmp_path / "nobom.csv"
    path.write_bytes(_csv(ROWS, "\r\n").encode("utf-16-le"))
    _raises_at(path, 1, "UTF-16")


# --- YAML configs --------------------------------------------------------------------------------

CONFIG = "# café config\ndata:\n  dataset: jsonl\n  train_file: données/train.csv\ntrain:\n  lr: 0.0002\n"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-bom", "utf-16", "utf-16-be-bom"])
@pytest.mark.parametrize("newline", sorted(NEWLINES))
def test_yaml_config_encodings_and_line_ends(tmp_path, encoding, newline):
    path = tmp_path / "run.yaml"
    path.write_bytes(ENCODINGS[encoding](CONFIG.replace("\n", NEWLINES[newline])))
    tree = read_yaml(path)
    assert tree == {"data": {"dataset": "jsonl", "train_file": "données/train.csv"}, "train": {"lr": 0.0002}}
    assert build_config(tree).data.train_file == "données/train.csv"


def test_yaml_syntax_error_names_path_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes("\ufeffdata:\r\n  dataset: jsonl\r\ntrain: {lr: [\r\n".encode())
    with pytest.raises(MathtuneError, match=f"{path}:4 is not valid YAML"):
        read_yaml(path)
