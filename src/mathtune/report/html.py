"""The report as one self-contained HTML page: inline CSS, PNGs embedded as base64 data URIs.

Everything that comes from a run (questions, model outputs, labels, paths) is escaped: model
output is untrusted text and may well contain `<script>`.
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any

from mathtune.report.markdown import FOOTNOTE, TABLE_HEAD, pair_sentence, run_line, table_cells

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1f2733;line-height:1.45}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}th,td{border:1px solid #d0d7de;padding:.3em .6em}
th{background:#f3f5f7;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #e5e7eb}figure{margin:1.2em 0}figcaption{color:#5c6675;font-size:.9em}
.sample{border:1px solid #d0d7de;border-radius:6px;padding:.6em 1em;margin:1em 0}
.outputs{display:grid;gap:.8em;grid-template-columns:repeat(auto-fit,minmax(280px,1fr))}
pre{background:#f6f8fa;padding:.6em;white-space:pre-wrap;word-break:break-word;font-size:.85em;margin:.3em 0}
.ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}.muted{color:#5c6675;font-size:.88em}
"""


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(data: dict[str, Any], figures: list[dict[str, Any]]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>mathtune report</title><style>{CSS}</style></head><body>",
        "<h1>mathtune report</h1>",
        "<h2>Accuracy</h2>",
        _table(data["rows"]),
        f'<p class="muted">{escape(FOOTNOTE)}</p>',
    ]
    parts += ["<ul>"] + [f"<li>{escape(pair_sentence(pair))}</li>" for pair in data["pairs"]] + ["</ul>"]
    parts += _figures(figures, "accuracy")
    if any(figure["section"] == "cost" for figure in figures):
        parts += ["<h2>Training and cost</h2>", *_figures(figures, "cost")]
    parts += [
        "<h2>Failure categories</h2>",
        _failure_table(data["rows"]),
        *_figures(figures, "failures"),
        "<h2>Sample problems</h2>",
    ]
    parts += [_sample(sample) for sample in data["samples"]] or [
        "<p>No problem was answered by every model.</p>"
    ]
    parts += ["<h2>Runs</h2><ul>"] + [f"<li>{escape(run_line(run))}</li>" for run in data["runs"]] + ["</ul>"]
    made = data["generated_by"]
    parts.append(
        f'<p class="muted">Report generated with mathtune {escape(made["versions"].get("mathtune", "?"))}'
        f", commit {escape(made.get('git_commit') or 'unknown')}.</p></body></html>"
    )
    return "\n".join(parts) + "\n"


def _figures(figures: list[dict[str, Any]], section: str) -> list[str]:
    return [
        f'<figure><h3>{escape(f["title"])}</h3><img alt="{escape(f["title"])}" src="{data_uri(f["path"])}">'
        f"<figcaption>{escape(f['caption'])}</figcaption></figure>"
        for f in figures
        if f["section"] == section
    ]


def _table(rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in TABLE_HEAD)
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if i else ''}>{escape(c)}</td>" for i, c in enumerate(table_cells(row)))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _failure_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    categories = list(rows[0]["failure_counts"])
    head = "<th>model</th>" + "".join(f"<th>{escape(c)}</th>" for c in categories)
    body = "".join(
        f"<tr><td>{escape(row['label'])}</td>"
        + "".join(f"<td class=num>{row['failure_counts'].get(c, 0)}</td>" for c in categories)
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _sample(sample: dict[str, Any]) -> str:
    cells = []
    for out in sample["outputs"]:
        verdict = (
            '<span class="ok">correct</span>'
            if out["correct"]
            else '<span class="bad">wrong</span> '
            f'<span class="muted">({escape(out["failure"] or "unclassified")})</span>'
        )
        sandbox = ""
        if out.get("sandbox"):
            box = out["sandbox"]
            sandbox = (
                f'<div class="muted">sandbox: {escape(str(box.get("reason")))}, answer '
                f"{escape(str(box.get('answer')))}</div>"
            )
        cells.append(
            f'<div><b>{escape(out["label"])}</b>: {verdict}<div class="muted">extracted '
            f"<code>{escape(str(out['extracted']))}</code></div><pre>{escape(out['output'])}</pre>"
            f"{sandbox}</div>"
        )
    return (
        f'<div class="sample"><h3>Problem {escape(sample["id"])} <span class="muted">(reference answer '
        f"{escape(sample['reference_answer'])})</span></h3><p>{escape(sample['question'])}</p>"
        f'<div class="outputs">{"".join(cells)}</div></div>'
    )
