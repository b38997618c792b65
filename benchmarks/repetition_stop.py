"""Would a bounded repetition stop pay? Read from an evaluation's own greedy predictions.

A greedy row caught in a loop writes the same block again and again until its token cap (256 by
default): in `make run`'s evaluations about a third of the rows end that way, and their tokens are
a large share of the evaluation's time. `eval.repetition_stop` ends a row once its tokens end in
`repeats` copies of one block spanning at least `min_tokens` tokens (`repeating_tail` in
evaluate/decoding.py). Because greedy decoding of a row does not depend on what follows, the row's
output under the stop is its output without the stop, cut where the detector first fires; so this
script measures the option exactly from predictions already written, without decoding again:

- tokens saved: the generated tokens after each cut, as a share of all generated tokens;
- answers changed: every score of every cut row recomputed on the cut text (a loop may end on a
  different number than the cap did), right -> wrong and wrong -> right per score.

The output is re-encoded with the model's tokenizer to find the cut: for SmolLM2's byte-level BPE
the re-encoded ids are the generated ones except where the model chose a non-canonical split,
which moves a cut by a token at most. (Programs are scored by running them; this script covers the
natural-language strategies, where the score reads the text.)

    python benchmarks/repetition_stop.py runs/quickstart_full/eval/base/predictions.jsonl \\
        runs/quickstart_full/eval/tuned/predictions.jsonl --grid 3x32,3x48,4x32,2x64
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mathtune.evaluate.decoding import repeating_tail
from mathtune.evaluate.extraction import score_answer
from mathtune.models.loading import load_tokenizer, resolve_source


def first_cut(ids: list[int], repeats: int, min_tokens: int) -> int | None:
    """The number of tokens a row keeps under the stop: the first length whose tail repeats."""
    for end in range(1, len(ids) + 1):
        if repeating_tail(ids[:end], repeats, min_tokens):
            return end
    return None


def measure(rows: list[dict], tokenizer, repeats: int, min_tokens: int, task: str) -> dict:
    generated = sum(row["new_tokens"] for row in rows)
    saved, fired, changed = 0, 0, {}
    fired_on_finished = 0
    for row in rows:
        ids = tokenizer(row["output"], add_special_tokens=False)["input_ids"]
        cut = first_cut(ids, repeats, min_tokens)
        if cut is None:
            continue
        fired += 1
        fired_on_finished += not row["truncated"]  # a row that ended by itself: the stop would cut real text
        saved += max(0, row["new_tokens"] - cut)
        text = tokenizer.decode(ids[:cut], skip_special_tokens=True)
        _, correct = score_answer(text, row["reference"], row["reference_answer"], task=task)
        for name, now in correct.items():
            before = row["correct"].get(name)
            if before is not None and now != before:
                key = f"{name}: {'right->wrong' if before else 'wrong->right'}"
                changed[key] = changed.get(key, 0) + 1
    return {"repeats": repeats, "min_tokens": min_tokens, "rows": len(rows),
            "rows_at_cap": sum(bool(row["truncated"]) for row in rows), "rows_cut": fired,
            "rows_cut_that_had_ended": fired_on_finished, "generated_tokens": generated,
            "tokens_saved": saved, "share_saved": round(saved / max(generated, 1), 4), "answers_changed": changed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", nargs="+", type=Path, help="predictions.jsonl of greedy evaluations")
    parser.add_argument("--model", default="smollm2-135m", help="the model whose tokenizer wrote them")
    parser.add_argument("--grid", default="3x32,3x48,4x32,2x64", help="repeats x min_tokens settings to try")
    parser.add_argument("--task", default="gsm8k", help="the lm-eval task whose filters score (gsm8k, gsm8k_cot)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    tokenizer = load_tokenizer(resolve_source(args.model))
    results = []
    for path in args.predictions:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        for setting in args.grid.split(","):
            repeats, min_tokens = (int(x) for x in setting.split("x"))
            result = {"predictions": str(path), **measure(rows, tokenizer, repeats, min_tokens, args.task)}
            results.append(result)
            print(f"{path}  repeats={repeats} min_tokens={min_tokens}: {result['rows_cut']} of {result['rows']} rows "
                  f"cut ({result['rows_at_cap']} at the cap, {result['rows_cut_that_had_ended']} that had ended), "
                  f"{result['tokens_saved']:,} of {result['generated_tokens']:,} tokens saved "
                  f"({100 * result['share_saved']:.1f} %), answers changed: {result['answers_changed'] or 'none'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
