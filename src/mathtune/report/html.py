"""The report as one self-contained HTML page: inline CSS, PNGs embedded as base64 data URIs.

The page is the Jinja template templates/report.html.j2, rendered with autoescape: everything that
comes from a run (questions, model outputs, labels, paths) is escaped, since model output is
untrusted text and may well contain `<script>`.
"""

from __future__ import annotations

import base64
import html
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from mathtune.report.markdown import FOOTNOTE, TABLE_HEAD, pair_sentence, run_line, table_cells, voted_sentences


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _escape(value: Any) -> Any:
    """Escape as html.escape does: markupsafe writes a quote as &#39; where html.escape writes
    &#x27;, and reports should not change byte for byte with the move to Jinja. Markup (a macro's
    output) is already safe; autoescape stays on behind this, so nothing can skip escaping."""
    if hasattr(value, "__html__"):
        return value
    return Markup(html.escape(str(value)))


@lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("mathtune.report", "templates"),
        autoescape=True,
        finalize=_escape,
        undefined=StrictUndefined,  # a missing field is an error, not an empty cell
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_html(data: dict[str, Any], figures: list[dict[str, Any]]) -> str:
    rows = data["rows"]
    made = data["generated_by"]
    return _environment().get_template("report.html.j2").render(
        head=TABLE_HEAD,
        table=[table_cells(row) for row in rows],
        footnote=FOOTNOTE,
        pairs=[pair_sentence(pair) for pair in data["pairs"]] + voted_sentences(rows),
        figures=[{**figure, "uri": data_uri(figure["path"])} for figure in figures],
        failure_rows=rows,
        categories=list(rows[0]["failure_counts"]) if rows else [],
        samples=data["samples"],
        runs=[run_line(run) for run in data["runs"]],
        version=made["versions"].get("mathtune", "?"),
        commit=made.get("git_commit") or "unknown",
    )
