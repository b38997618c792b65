"""Side-by-side comparison of evaluated models on the same problems: table, McNemar, samples, chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mathtune.errors import MathtuneError
from mathtune.evaluate.metrics import mcnemar_exact
from mathtune.io import atomic_write_json, atomic_write_text, read_jsonl_tolerant

SAMPLES_SHOWN = 5


def find_eval_dirs(paths: list[Path]) -> list[tuple[str, Path]]:
    """Each path is an eval dir (metrics.json) or a run dir holding eval/base and eval/tuned."""
    found = []
    for path in paths:
        if (path / "metrics.json").is_file():
            found.append((eval_dir_label(path), path))
            continue
        # eval/base, eval/tuned, and eval/<benchmark>/tuned for other benchmarks
        subdirs = [d for d in sorted((path / "eval").glob("*")) if (d / "metrics.json").is_file()]
        subdirs += [d for d in sorted((path / "eval").glob("*/*")) if (d / "metrics.json").is_file()]
        if not subdirs:
            raise MathtuneError(f"{path} holds no evaluation (no metrics.json, no eval/*/metrics.json)")
        found += [(f"{path.name}/{d.relative_to(path / 'eval')}", d) for d in subdirs]
    return _unique_labels(found)


def eval_dir_label(path: Path) -> str:
    """An eval dir named by its run and benchmark: RUN/tuned, RUN/svamp/tuned (RUN/eval/svamp/tuned);
    a dir outside a run's eval/ by its own name."""
    eval_root = next((parent for parent in path.parents if parent.name == "eval"), None)
    if eval_root is None:
        return path.name
    return f"{eval_root.parent.name}/{path.relative_to(eval_root)}"


def _unique_labels(found: list[tuple[str, Path]]) -> list[tuple[str, Path]]:
    """Two runs of the same folder name (a/run, b/run) get their parent folder's name in front."""
    labels = [label for label, _ in found]
    if len(set(labels)) == len(labels):
        return found
    named = []
    for label, path in found:
        eval_root = next((parent for parent in path.parents if parent.name == "eval"), None)
        anchor = eval_root.parent if eval_root is not None else path
        named.append((f"{anchor.parent.name}/{label}" if labels.count(label) > 1 else label, path))
    return named


def _load_entry(label: str, eval_dir: Path) -> dict[str, Any]:
    try:
        metrics = json.loads((eval_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MathtuneError(f"unreadable metrics in {eval_dir}: {exc}") from None
    # RUN/eval/tuned, or RUN/eval/<dataset>/tuned for another benchmark
    run_dir = next((parent.parent for parent in eval_dir.parents if parent.name == "eval"), eval_dir)
    train_card = {}
    if eval_dir.name != "base" and (run_dir / "train_card.json").is_file():
        train_card = json.loads((run_dir / "train_card.json").read_text())
    predictions = {row["id"]: row for row in read_jsonl_tolerant(eval_dir / "predictions.jsonl")}
    return {"label": label, "dir": str(eval_dir), "metrics": metrics, "train": train_card,
            "predictions": predictions}


def _pair(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    common = [i for i in first["predictions"] if i in second["predictions"]]
    a = [bool(first["predictions"][i]["correct"]["strict-match"]) for i in common]
    b = [bool(second["predictions"][i]["correct"]["strict-match"]) for i in common]
    others = [name for name in first["metrics"]["scores"]
              if name != "strict-match" and name in second["metrics"]["scores"]]
    differing = [i for i, x, y in zip(common, a, b, strict=True) if x != y][:SAMPLES_SHOWN]
    samples = [{"id": i, "question": first["predictions"][i]["question"],
                "reference_answer": first["predictions"][i]["reference_answer"],
                first["label"]: first["predictions"][i]["output"], second["label"]: second["predictions"][i]["output"]}
               for i in differing]
    # Strict-match rewards the '#### N' format as well as the number; the other filters show whether a
    # gain is more than format (a base model that never writes '####' scores 0 strict).
    by_score = {name: mcnemar_exact([bool(first["predictions"][i]["correct"].get(name)) for i in common],
                                    [bool(second["predictions"][i]["correct"].get(name)) for i in common])
                for name in others} if common else {}
    return {"first": first["label"], "second": second["label"], "n_common": len(common),
            "mcnemar": mcnemar_exact(a, b) if common else None, "mcnemar_by_score": by_score,
            "decoding_differs": decoding_differences(first["metrics"], second["metrics"]), "samples": samples}


# Generation settings that change what a model writes; the batch size only by padding, and the
# sample count only adds maj@k, so those two are left out.
DECODING_KEYS = ("greedy", "max_new_tokens", "stop", "dtype", "calculator", "temperature")


def decoding_differences(first: dict[str, Any], second: dict[str, Any]) -> dict[str, list[Any]]:
    """{setting: [first's, second's]} for the decoding settings two evaluations ran with differently."""
    a = first.get("reproducibility", {}).get("generation", {})
    b = second.get("reproducibility", {}).get("generation", {})
    return {key: [a.get(key), b.get(key)] for key in DECODING_KEYS if key in a and key in b and a[key] != b[key]}


def compare_runs(eval_dirs: list[Path], labels: list[str] | None = None) -> dict[str, Any]:
    named = list(zip(labels, eval_dirs, strict=True)) if labels else find_eval_dirs(eval_dirs)
    entries = [_load_entry(label, path) for label, path in named]
    rows = [_table_row(e) for e in entries]
    # Models are paired only on the same problems: the first entry of each benchmark against the rest.
    # A perturbed copy (eval.perturbed) keeps the original problems' ids but not their numbers, so it
    # forms a group of its own, and is paired with an original evaluation only of the same model (the
    # robustness check: tuned vs tuned-perturbed), never with another model's.
    by_problems: dict[tuple[str, bool], list[dict[str, Any]]] = {}
    for entry in entries:
        by_problems.setdefault((_benchmark(entry["metrics"]), _perturbed(entry["metrics"])), []).append(entry)
    pairs = [_pair(group[0], other) for group in by_problems.values() for other in group[1:]]
    for (benchmark, perturbed), group in by_problems.items():
        originals = by_problems.get((benchmark, False), []) if perturbed else []
        pairs += [_pair(original, copy) for copy in group for original in originals
                  if _model_identity(original["metrics"]) == _model_identity(copy["metrics"])]
    return {"rows": rows, "pairs": pairs}


def _perturbed(metrics: dict[str, Any]) -> bool:
    return bool(metrics.get("reproducibility", {}).get("problems", {}).get("perturbed", False))


def _model_identity(metrics: dict[str, Any]) -> tuple[Any, Any]:
    """The base model and the tuned weights an evaluation ran (None for metrics that do not say)."""
    reproducibility = metrics.get("reproducibility", {})
    return reproducibility.get("model"), reproducibility.get("adapter")


def _benchmark(metrics: dict[str, Any]) -> str:
    """The benchmark an evaluation ran on (metrics written before it was recorded: from the dataset)."""
    if "benchmark" in metrics:
        return metrics["benchmark"]
    dataset = metrics.get("reproducibility", {}).get("dataset", {})
    return str(dataset.get("dataset", "gsm8k")) + ("-" + dataset["test_file"] if dataset.get("test_file") else "")


def _table_row(entry: dict[str, Any]) -> dict[str, Any]:
    metrics, card = entry["metrics"], entry["train"]
    return {
        "label": entry["label"], "benchmark": _benchmark(metrics), "n": metrics["n"], "scores": metrics["scores"],
        "perplexity": metrics.get("perplexity"), "rouge1": metrics.get("rouge1"),
        "semantic_similarity": metrics.get("semantic_similarity"),
        "trainable_params": card.get("trainable_params"), "peak_train_rss_mb": card.get("peak_rss_mb"),
        "train_seconds": card.get("wall_seconds"), "train_tokens_per_second": card.get("tokens_per_second"),
        "eval_seconds": metrics.get("wall_seconds"), "failures": metrics.get("failures", {}),
        "voted": metrics.get("voted"),
    }


def format_value(value: Any, digits: int = 2) -> str:
    """A table cell: '–' for missing, thousands separators, fixed decimals for floats."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _score(row: dict[str, Any], name: str) -> str:
    score = row["scores"].get(name)
    return "–" if score is None else f"{100 * score['exact_match']:.1f} ± {100 * score['stderr']:.1f}"


def render_comparison_markdown(comparison: dict[str, Any]) -> str:
    lines = ["| model | benchmark | n | EM strict % | EM flexible % | numeric-match % | math-verify % | perplexity "
             "| ROUGE-1 | sem. sim. | trainable params | train peak RSS MB | train s | train tok/s | eval s |",
             "|" + "---|" * 15]
    for row in comparison["rows"]:
        lines.append(
            f"| {row['label']} | {row.get('benchmark', '–')} | {row['n']} | {_score(row, 'strict-match')} "
            f"| {_score(row, 'flexible-extract')} | {_score(row, 'numeric-match')} | {_score(row, 'math-verify')} "
            f"| {format_value(row['perplexity'])} | {format_value(row['rouge1'], 3)} "
            f"| {format_value(row['semantic_similarity'], 3)} | {format_value(row['trainable_params'])} "
            f"| {format_value(row['peak_train_rss_mb'], 0)} | {format_value(row['train_seconds'], 0)} "
            f"| {format_value(row['train_tokens_per_second'], 0)} | {format_value(row['eval_seconds'], 0)} |")
    lines.append("\nEM: exact match (lm-eval-harness filters), ± one standard error; math-verify: symbolic "
                 "equality by the math-verify library; '–': the score does not apply (ARC: letters only). Models "
                 "are paired only on the same problems: the same benchmark, and a perturbed copy (new numbers) "
                 "only with its own model's original problems.")
    lines += _voted_markdown(comparison["rows"])
    for pair in comparison["pairs"]:
        lines += _pair_markdown(pair)
    return "\n".join(lines) + "\n"


def _voted_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """Greedy and voted (eval.vote) scores side by side, with the McNemar test between them."""
    voted = [row for row in rows if row.get("voted")]
    if not voted:
        return []
    lines = ["\n## Greedy vs voted (test-time compute, the same problems)\n",
             "| model | vote | k | greedy numeric-match % | voted numeric-match % | only greedy right "
             "| only voted right | McNemar p |", "|" + "---|" * 8]
    for row in voted:
        vote, name = row["voted"], "numeric-match"
        if name not in vote["scores"]:
            name = next(iter(vote["scores"]))
        test = vote["mcnemar_vs_greedy"][name]
        greedy = {"scores": {name: row["scores"][name]}} if name in row["scores"] else {"scores": {}}
        lines.append(f"| {row['label']} | {vote['method']} | {vote['k']} | {_score(greedy, name)} "
                     f"| {_score(vote, name)} | {test['b']} | {test['c']} | {test['p_value']:.4g} |")
    return lines


def _pair_markdown(pair: dict[str, Any]) -> list[str]:
    test = pair["mcnemar"]
    lines = [f"\n## {pair['first']} vs {pair['second']} ({pair['n_common']} shared problems)\n"]
    if pair.get("decoding_differs"):
        settings = "; ".join(f"{key}: {a} vs {b}" for key, (a, b) in pair["decoding_differs"].items())
        lines.append(f"**Decoded with different settings** ({pair['first']} vs {pair['second']}: {settings}): the "
                     "difference measures the decoding as well as the models.\n")
    if test:
        lines.append(f"Exact McNemar test on strict-match outcomes: only {pair['first']} right: {test['b']}, "
                     f"only {pair['second']} right: {test['c']}, two-sided p = {test['p_value']:.4g}.")
        for name, other in pair.get("mcnemar_by_score", {}).items():
            lines.append(f"On {name}: only {pair['first']} right: {other['b']}, only {pair['second']} right: "
                         f"{other['c']}, p = {other['p_value']:.4g}.")
    for sample in pair["samples"]:
        lines.append(f"\n### Problem {sample['id']} (reference answer {sample['reference_answer']})\n")
        lines.append(f"> {sample['question']}\n")
        for label in (pair["first"], pair["second"]):
            lines.append(f"**{label}:**\n\n```\n{sample[label].strip()}\n```\n")
    return lines


def write_comparison(comparison: dict[str, Any], stem: Path) -> None:
    atomic_write_text(stem.with_suffix(".md"), render_comparison_markdown(comparison))
    atomic_write_json(stem.with_suffix(".json"), comparison)
