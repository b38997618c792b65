"""`mathtune augment`: verified new train problems written as JSONL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mathtune.config import RunConfig
from mathtune.data.problems import load_split
from mathtune.errors import MathtuneError
from mathtune.io import atomic_write_json, atomic_write_text


def augment_workflow(cfg: RunConfig, output: Path, variants: int, seed: int, include_original: bool = False,
                     overwrite: bool = False) -> dict[str, Any]:
    """Verified variants of the train split (data/augment.py) as JSONL rows that `data.dataset=jsonl`
    reads (question, answer ending in '#### N', program, source_id); `<output>.report.json` counts
    what was kept and dropped. Variants that repeat or share a 13-word n-gram with a test question
    are dropped."""
    from mathtune.data.augment import augment, overlaps_test_split
    from mathtune.data.problems import sample_problems

    output = Path(output)
    if output.exists() and not overwrite:
        raise MathtuneError(f"{output} exists; pass --overwrite to replace it")
    problems = sample_problems(load_split(cfg.data, cfg.resolved_data_dir(), "train"), cfg.data.train_size,
                               cfg.train.seed)
    test = load_split(cfg.data, cfg.resolved_data_dir(), "test")
    kept, report = augment(problems, variants, seed, exclude_questions=[p.question for p in test])
    overlapping = overlaps_test_split([variant for variant, _ in kept], test)
    kept = [(variant, program) for variant, program in kept if variant.id not in overlapping]
    report.kept = len(kept)
    if overlapping:
        report.dropped["shares a 13-gram with a test question"] += len(overlapping)
    rows = [{"id": p.id, "question": p.question, "answer": p.solution, "source_id": p.id} for p in problems
            ] if include_original else []
    rows += [{"id": v.id, "question": v.question, "answer": v.solution, "program": program,
              "source_id": v.id.rpartition("~")[0]} for v, program in kept]
    atomic_write_text(output, "".join(json.dumps(row) + "\n" for row in rows))
    data_dir = cfg.resolved_data_dir()  # the folder read, also when it came from MATHTUNE_DATA_DIR
    source = {**cfg.data.model_dump(mode="json"), "data_dir": str(data_dir) if data_dir else None}
    record = {**report.to_dict(), "rows": len(rows), "seed": seed, "variants": variants,
              "include_original": include_original, "source": source}
    atomic_write_json(output.with_name(output.name + ".report.json"), record)
    return record
