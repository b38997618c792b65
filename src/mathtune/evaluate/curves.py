"""Reranking k sampled solutions and the test-time compute curve (the GSM8K paper's Figure 3 kind).

From the rows of a samples.jsonl (recipes/sample.py), each sample already scored by the evaluation's
extractor (or the sandbox), and optionally a verifier score per sample:

- pass@N (oracle): some sample of N is right; the unbiased estimator 1 - C(n-c, N) / C(n, N).
- maj@N: the most frequent final answer of N samples (ties: the answer seen first).
- verifier@N (best-of-N): the answer of the sample the verifier scores highest.
- weighted@N: verifier-weighted voting: the answer whose samples' scores sum highest.

N < k is estimated as the mean over seeded random subsets of size N (every subset when there are
few), so each point uses all k samples and the curve is smooth; at N = k every method is one binary
outcome per problem, which is what the McNemar tests compare.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

from mathtune.answers import numbers_equal, parse_number
from mathtune.evaluate.extraction import INVALID
from mathtune.evaluate.metrics import auc, mcnemar_exact, mean_and_stderr

Picker = Callable[[list[dict[str, Any]], list[float] | None, str], bool]
SUBSETS = 200  # random subsets per problem and N (fewer when every subset can be listed)


def vote_key(sample: dict[str, Any], score: str) -> float | str | None:
    """A sample's final answer as voting compares it: the number the score's extractor read (or the
    sandbox computed), else the extracted text; None for no answer."""
    value = (sample.get("extracted") or {}).get(score)
    if value is None or value == INVALID or value == "":
        return None
    number = parse_number(str(value))
    return number if number is not None else str(value).strip()


def _same(a: float | str, b: float | str) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return numbers_equal(a, b)
    return a == b


def _groups(samples: list[dict[str, Any]], score: str) -> list[list[int]]:
    """Indices of samples grouped by equal answers, in order of first appearance (no answer: no group)."""
    groups: list[list[int]] = []
    keys: list[float | str] = []
    for index, sample in enumerate(samples):
        key = vote_key(sample, score)
        if key is None:
            continue
        for group, seen in zip(groups, keys, strict=True):
            if _same(seen, key):
                group.append(index)
                break
        else:
            groups.append([index])
            keys.append(key)
    return groups


def majority_correct(samples: list[dict[str, Any]], scores: list[float] | None, score: str) -> bool:
    groups = _groups(samples, score)
    if not groups:
        return False
    best = max(groups, key=len)  # max keeps the first of equal-sized groups
    return bool(samples[best[0]]["correct"].get(score))


def best_of_n_correct(samples: list[dict[str, Any]], scores: list[float] | None, score: str) -> bool:
    if scores is None:
        raise ValueError("best-of-N needs verifier scores")
    best = max(range(len(samples)), key=lambda i: scores[i])  # ties: the first sample
    return bool(samples[best]["correct"].get(score))


def weighted_correct(samples: list[dict[str, Any]], scores: list[float] | None, score: str) -> bool:
    if scores is None:
        raise ValueError("weighted voting needs verifier scores")
    groups = _groups(samples, score)
    if not groups:
        return False
    best = max(groups, key=lambda group: sum(scores[i] for i in group))
    return bool(samples[best[0]]["correct"].get(score))


PICKERS: dict[str, Picker] = {"maj": majority_correct, "verifier": best_of_n_correct,
                              "weighted": weighted_correct}


def pass_at(n: int, correct: int, size: int) -> float:
    """Chance that some of `size` samples drawn from n (correct of them right) is right (Chen et al. 2021)."""
    if n - correct < size:
        return 1.0
    return 1.0 - math.comb(n - correct, size) / math.comb(n, size)


def _subsets(k: int, size: int, rng: random.Random) -> list[tuple[int, ...]]:
    if math.comb(k, size) <= SUBSETS:
        return list(itertools.combinations(range(k), size))
    return [tuple(sorted(rng.sample(range(k), size))) for _ in range(SUBSETS)]


def curve_sizes(k: int) -> list[int]:
    """1, 2, 4, ... up to k (k itself always included)."""
    sizes = [2**i for i in range(int(math.log2(k)) + 1)]
    return sizes if sizes[-1] == k else [*sizes, k]


def compute_curve(rows: list[dict[str, Any]], scores: dict[str, list[float]] | None = None,
                  score: str = "numeric-match", seed: int = 0) -> dict[str, Any]:
    """Accuracy (mean over problems, with its standard error) against N for every method that the
    inputs allow: pass and maj always, verifier and weighted when `scores` (per problem id, one per
    sample) are given."""
    if not rows:
        raise ValueError("no sampled problems")
    k = len(rows[0]["samples"])
    if any(len(row["samples"]) != k for row in rows):
        raise ValueError("every problem needs the same number of samples")
    methods = ["pass", "maj"] + (["verifier", "weighted"] if scores is not None else [])
    rng = random.Random(seed)
    points: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for size in curve_sizes(k):
        per_problem: dict[str, list[float]] = {m: [] for m in methods}
        for row in rows:
            samples = row["samples"]
            row_scores = scores[row["id"]] if scores is not None else None
            correct = sum(bool(s["correct"].get(score)) for s in samples)
            per_problem["pass"].append(pass_at(k, correct, size))
            subsets = _subsets(k, size, rng)
            for method in methods[1:]:
                picker = PICKERS[method]
                hits = [picker([samples[i] for i in subset],
                               [row_scores[i] for i in subset] if row_scores is not None else None, score)
                        for subset in subsets]
                per_problem[method].append(sum(hits) / len(hits))
        for method in methods:
            mean, stderr = mean_and_stderr(per_problem[method])
            points[method].append({"n": size, "accuracy": mean, "stderr": stderr})
    return {"k": k, "problems": len(rows), "score": score, "subsets_per_point": SUBSETS, "seed": seed,
            "curve": points}


def outcomes_at_k(rows: list[dict[str, Any]], scores: dict[str, list[float]] | None = None,
                  score: str = "numeric-match") -> dict[str, list[bool]]:
    """One right/wrong per problem and method, using all k samples (what McNemar compares)."""
    outcomes: dict[str, list[bool]] = {"maj": [majority_correct(r["samples"], None, score) for r in rows]}
    if scores is not None:
        for method in ("verifier", "weighted"):
            outcomes[method] = [PICKERS[method](r["samples"], scores[r["id"]], score) for r in rows]
    return outcomes


def rerank_table(rows: list[dict[str, Any]], greedy: dict[str, bool] | None,
                 scores: dict[str, list[float]] | None, score: str = "numeric-match") -> dict[str, Any]:
    """Accuracy at N = k of each method beside greedy, and exact McNemar tests between them."""
    outcomes = outcomes_at_k(rows, scores, score)
    if greedy is not None:
        missing = [r["id"] for r in rows if r["id"] not in greedy]
        if missing:
            raise ValueError(f"greedy predictions lack {len(missing)} sampled problems (first: {missing[0]})")
        outcomes = {"greedy": [greedy[r["id"]] for r in rows], **outcomes}
    k = len(rows[0]["samples"])
    table = {}
    for method, flags in outcomes.items():
        mean, stderr = mean_and_stderr(flags)
        table[method if method == "greedy" else f"{method}@{k}"] = {"accuracy": mean, "stderr": stderr,
                                                                   "right": sum(flags)}
    pairs = [(a, b) for a, b in itertools.combinations(outcomes, 2)]
    tests = {f"{b}@{k} vs {a}" if a == "greedy" else f"{b}@{k} vs {a}@{k}": mcnemar_exact(outcomes[a], outcomes[b])
             for a, b in pairs}
    ranking = {"verifier_auc": verifier_auc(rows, scores, score)} if scores is not None else {}
    return {"k": k, "problems": len(rows), "score": score, "methods": table, "mcnemar": tests, **ranking}


def verifier_auc(rows: list[dict[str, Any]], scores: dict[str, list[float]], score: str = "numeric-match"
                 ) -> dict[str, Any]:
    """How well the verifier ranks these samples: the AUC over all of them, and the mean AUC within a
    problem (over the problems with right and wrong samples). Re-ranking only ever compares one
    problem's samples, so the within-problem AUC is the one that says whether verifier@k and weighted
    voting can beat maj@k; the pooled AUC also rewards telling easy problems from hard ones."""
    labels = [float(bool(s["correct"].get(score))) for row in rows for s in row["samples"]]
    pooled = auc([x for row in rows for x in scores[row["id"]]], labels)
    within = [auc(scores[row["id"]], [float(bool(s["correct"].get(score))) for s in row["samples"]]) for row in rows]
    mixed = [value for value in within if value is not None]
    return {"all_samples": pooled, "within_problem": sum(mixed) / len(mixed) if mixed else None,
            "problems_with_right_and_wrong": len(mixed)}


def curve_markdown(curve: dict[str, Any], rerank: dict[str, Any] | None = None) -> str:
    """The curve as a table (one row per N, one column per method) and the N = k comparisons."""
    methods = list(curve["curve"])
    names = {"pass": "pass@N (oracle)", "maj": "maj@N", "verifier": "verifier best-of-N",
             "weighted": "verifier-weighted vote"}
    lines = [f"Accuracy ({curve['score']}, %, ± stderr) on {curve['problems']} problems, k = {curve['k']} samples:",
             "", "| N | " + " | ".join(names[m] for m in methods) + " |",
             "|---:|" + "---:|" * len(methods)]
    for index, point in enumerate(curve["curve"][methods[0]]):
        cells = [f"{100 * curve['curve'][m][index]['accuracy']:.1f} ± {100 * curve['curve'][m][index]['stderr']:.1f}"
                 for m in methods]
        lines.append(f"| {point['n']} | " + " | ".join(cells) + " |")
    if rerank is not None:
        lines += ["", f"At N = {rerank['k']} (one outcome per problem):", "", "| method | accuracy % | right |",
                  "|---|---:|---:|"]
        lines += [f"| {m} | {100 * v['accuracy']:.1f} ± {100 * v['stderr']:.1f} | {v['right']} |"
                  for m, v in rerank["methods"].items()]
        lines += ["", "| exact McNemar | b | c | p |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {t['b']} | {t['c']} | {t['p_value']:.3g} |" for name, t in rerank["mcnemar"].items()]
        if rerank.get("verifier_auc"):
            ranking = rerank["verifier_auc"]

            def shown(value: float | None) -> str:
                return "n/a" if value is None else f"{value:.3f}"

            lines += ["", f"Verifier AUC: {shown(ranking['all_samples'])} over all samples, "
                      f"{shown(ranking['within_problem'])} within a problem (mean over the "
                      f"{ranking['problems_with_right_and_wrong']} problems with right and wrong samples)."]
    return "\n".join(lines) + "\n"


def curve_figure(curve: dict[str, Any], greedy: dict[str, Any] | None = None) -> Any:
    """Accuracy against N (log2 axis), one line per method, with ±1 stderr bands; `greedy` (the
    rerank table's greedy entry, when the curve was drawn with --greedy) as a dashed level line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for method, points in curve["curve"].items():
        xs = [p["n"] for p in points]
        ys = [100 * p["accuracy"] for p in points]
        errs = [100 * p["stderr"] for p in points]
        axis.plot(xs, ys, marker="o", label=method)
        axis.fill_between(xs, [y - e for y, e in zip(ys, errs, strict=True)],
                          [y + e for y, e in zip(ys, errs, strict=True)], alpha=0.15)
    if greedy is not None:
        axis.axhline(100 * greedy["accuracy"], color="gray", linestyle="--",
                     label=f"greedy ({100 * greedy['accuracy']:.1f} %)")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("N (samples per problem)")
    axis.set_ylabel(f"accuracy, {curve['score']} (%)")
    axis.set_title(f"Test-time compute, {curve['problems']} problems")
    axis.legend()
    figure.tight_layout()
    return figure


def plot_curve(curve: dict[str, Any], path: Any, greedy: dict[str, Any] | None = None) -> None:
    import matplotlib.pyplot as plt

    figure = curve_figure(curve, greedy)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def scores_by_id(rows: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """{problem id: one verifier score per sample} from rows of a verifier_scores.jsonl."""
    return {row["id"]: [float(s) for s in row["scores"]] for row in rows}


def vote_outcomes(samples: list[dict[str, Any]], weights: list[float] | None) -> dict[str, bool]:
    """Per score, whether the voted answer of one problem's samples is right: the answer of the most
    samples, or (with verifier `weights`) the answer whose samples' weights sum highest."""
    names = dict.fromkeys(name for sample in samples for name in sample["correct"])
    pick = majority_correct if weights is None else weighted_correct
    return {name: pick(samples, weights, name) for name in names}


def voted_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Voted accuracy per score beside greedy (`row["correct"]`) on the same problems, with the exact
    McNemar test between them (b: greedy right and the vote wrong, c: the vote right and greedy wrong);
    None when no row was voted on."""
    voted = [row for row in rows if "vote" in row]
    if not voted:
        return None
    scores, mcnemar = {}, {}
    for name in voted[0]["vote"]["correct"]:
        by_vote = [bool(row["vote"]["correct"].get(name)) for row in voted]
        greedy = [bool(row["correct"].get(name)) for row in voted]
        value, stderr = mean_and_stderr(by_vote)
        scores[name] = {"exact_match": value, "stderr": stderr}
        mcnemar[name] = mcnemar_exact(greedy, by_vote)
    first = voted[0]["vote"]
    return {"method": first["method"], "k": first["k"], "n": len(voted), "scores": scores,
            "mcnemar_vs_greedy": mcnemar}
