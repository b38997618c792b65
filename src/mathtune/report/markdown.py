"""The report as Markdown (GitHub-flavoured), PNGs linked by relative path; plus shared formatting."""

from __future__ import annotations

from typing import Any

from mathtune.compare import format_value as fmt
from mathtune.evaluate.extraction import SCORE_TITLES

TABLE_HEAD = [
    "model",
    "n",
    *(f"{t} % [95% CI]" for t in SCORE_TITLES.values()),
    "perplexity",
    "trainable params",
    "train peak RSS MB",
    "train s",
    "eval s",
]
# numeric: as extraction.numeric_match scores it (the first number after '####', else the last one).
FOOTNOTE = (
    "EM: exact match with lm-eval-harness's GSM8K filters; numeric: the model's answer (the first "
    "number after the first '####', else the last number in the output) equals the reference as a "
    "number ($29.00 = 29). Brackets: Wilson 95% score interval over the n test problems."
)


def score_cell(score: dict[str, Any] | None) -> str:
    if score is None:  # a score that does not apply here (ARC has letters only) or predates it
        return "–"
    ci = score.get("ci95")
    text = f"{100 * score['exact_match']:.1f}"
    return text + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def table_cells(row: dict[str, Any]) -> list[str]:
    return [
        str(row["label"]),
        fmt(row["n"]),
        *(score_cell(row["scores"].get(name)) for name in SCORE_TITLES),
        fmt(row.get("perplexity")),
        fmt(row.get("trainable_params")),
        fmt(row.get("peak_train_rss_mb"), 0),
        fmt(row.get("train_seconds"), 0),
        fmt(row.get("eval_seconds"), 0),
    ]


def pair_sentence(pair: dict[str, Any]) -> str:
    test = pair["mcnemar"]
    if not test:
        return f"{pair['first']} vs {pair['second']}: no shared problems."
    return (
        f"{pair['first']} vs {pair['second']} on {pair['n_common']} shared problems: only {pair['first']} "
        f"right {test['b']}, only {pair['second']} right {test['c']}; exact McNemar two-sided "
        f"p = {test['p_value']:.4g}."
    )


def voted_sentences(rows: list[dict[str, Any]]) -> list[str]:
    """Greedy beside voted (`eval.vote`) for each row that voted, with the McNemar test between them."""
    sentences = []
    for row in rows:
        voted = row.get("voted")
        if not voted:
            continue
        name = "numeric-match" if "numeric-match" in voted["scores"] else next(iter(voted["scores"]))
        test, greedy = voted["mcnemar_vs_greedy"][name], row["scores"].get(name)
        greedy_text = "–" if greedy is None else f"{100 * greedy['exact_match']:.1f}"
        sentences.append(
            f"{row['label']}: greedy {name} {greedy_text} %, "
            f"{voted['method']}@{voted['k']} {100 * voted['scores'][name]['exact_match']:.1f} % on the same "
            f"{voted['n']} problems: only greedy right {test['b']}, only the vote right {test['c']}; exact "
            f"McNemar two-sided p = {test['p_value']:.4g}.")
    return sentences


def run_line(run: dict[str, Any]) -> str:
    return (
        f"{run['name']}: model {run['model']}, method {run['method']}, prompt {run['prompt']}, "
        f"train rows {fmt(run['train_size']) if run['train_size'] else 'all'}, steps {fmt(run['steps'])}, "
        f"final loss {fmt(run['final_loss'], 3)}, commit {run['git_commit'] or 'unknown'}"
    )


def _fence(text: str) -> str:
    fence = "````" if "```" in text else "```"
    return f"{fence}\n{text.strip()}\n{fence}"


def render_report_markdown(data: dict[str, Any], figures: list[dict[str, Any]]) -> str:
    lines = [
        "# mathtune report",
        "",
        "## Accuracy",
        "",
        "| " + " | ".join(TABLE_HEAD) + " |",
        "|" + "---|" * len(TABLE_HEAD),
    ]
    lines += [
        "| " + " | ".join(cell.replace("|", "\\|") for cell in table_cells(row)) + " |"
        for row in data["rows"]
    ]
    lines += ["", FOOTNOTE, ""]
    lines += [f"- {pair_sentence(pair)}" for pair in data["pairs"]]
    lines += [f"- {sentence}" for sentence in voted_sentences(data["rows"])]
    lines += _figures(figures, "accuracy")
    if any(figure["section"] == "cost" for figure in figures):
        lines += ["", "## Training and cost"] + _figures(figures, "cost")
    lines += [
        "",
        "## Failure categories",
        "",
        "| model | " + " | ".join(_categories(data)) + " |",
        "|" + "---|" * (len(_categories(data)) + 1),
    ]
    lines += [
        f"| {row['label']} | "
        + " | ".join(str(row["failure_counts"].get(c, 0)) for c in _categories(data))
        + " |"
        for row in data["rows"]
    ]
    lines += _figures(figures, "failures")
    lines += ["", "## Sample problems", ""]
    for sample in data["samples"]:
        lines += _sample_markdown(sample)
    lines += ["## Runs", ""] + [f"- {run_line(run)}" for run in data["runs"]]
    versions = data["generated_by"]["versions"]
    lines += [
        "",
        f"Report generated with mathtune {versions.get('mathtune', '?')}, "
        f"commit {data['generated_by'].get('git_commit') or 'unknown'}.",
    ]
    return "\n".join(lines) + "\n"


def _figures(figures: list[dict[str, Any]], section: str) -> list[str]:
    lines = []
    for figure in (f for f in figures if f["section"] == section):
        lines += [
            "",
            f"### {figure['title']}",
            "",
            f"![{figure['title']}]({figure['file']})",
            "",
            figure["caption"],
        ]
    return lines


def _categories(data: dict[str, Any]) -> list[str]:
    return list(data["rows"][0]["failure_counts"]) if data["rows"] else []


def _sample_markdown(sample: dict[str, Any]) -> list[str]:
    lines = [
        f"### Problem {sample['id']} (reference answer {sample['reference_answer']})",
        "",
        "> " + sample["question"].replace("\n", "\n> "),
        "",
    ]
    for out in sample["outputs"]:
        verdict = "correct" if out["correct"] else f"wrong ({out['failure'] or 'unclassified'})"
        lines += [
            f"**{out['label']}**: extracted `{out['extracted']}`, {verdict}",
            "",
            _fence(out["output"]),
            "",
        ]
    return lines
