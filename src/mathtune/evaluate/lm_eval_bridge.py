"""Run lm-evaluation-harness itself on a base model or base + adapter, offline when data is local.

The shipped task YAMLs (`evaluate/tasks/`) are lm-eval's `gsm8k` and `gsm8k_cot` with the dataset
lines swapped for `dataset_path: json`; the local file paths are filled in at run time and the
resolved YAML is written beside the results, so a reader can rerun exactly what ran. Without a
data dir the hub copy (`openai/gsm8k`) is used, as lm-eval does.

By default lm-eval scores the same problems `mathtune eval` draws (its `samples=` argument takes
their row indices), so `lm_eval.json` sits beside `metrics.json` as an independent second opinion.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from mathtune.errors import MathtuneError
from mathtune.evaluate.extraction import FILTERS

TASKS_DIR = Path(__file__).with_name("tasks")
TASK_FILES = {"gsm8k": "gsm8k.yaml", "gsm8k_cot": "gsm8k_cot.yaml"}
HUB_DATASET = ("openai/gsm8k", "main")
FILTER_NAMES = tuple(FILTERS)  # lm-eval's gsm8k filters, read from the same task YAML


def shipped_task(name: str) -> dict[str, Any]:
    if name not in TASK_FILES:
        raise MathtuneError(f"unknown lm-eval task '{name}' (choose from {', '.join(TASK_FILES)})")
    return yaml.safe_load((TASKS_DIR / TASK_FILES[name]).read_text(encoding="utf-8"))


def task_config(name: str, data_dir: Path | None, subset: str = "main") -> dict[str, Any]:
    """The task as lm-eval will run it: local JSONL files when `data_dir` is given, else the hub."""
    tree = shipped_task(name)
    if data_dir is None:
        tree.pop("dataset_kwargs", None)
        tree["dataset_path"], tree["dataset_name"] = HUB_DATASET[0], subset
        return tree
    suffix = "_socratic" if subset == "socratic" else ""
    files = {split: data_dir / "gsm8k" / f"{split}{suffix}.jsonl" for split in ("train", "test")}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise MathtuneError(f"lm-eval task {name}: GSM8K file(s) missing: {', '.join(missing)}")
    tree["dataset_kwargs"] = {"data_files": {split: str(path.resolve()) for split, path in files.items()}}
    return tree


def write_task_dir(configs: dict[str, dict[str, Any]], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, tree in configs.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    return folder


def hf_model_args(model_path: str, adapter_dir: Path | None, dtype: str, device: str) -> dict[str, Any]:
    """lm-eval `hf` model arguments: the base, plus `peft=` for an adapter or the tuned weights."""
    args: dict[str, Any] = {"pretrained": model_path, "dtype": dtype, "device": device}
    if adapter_dir is None:
        return args
    if (adapter_dir / "adapter_config.json").is_file():
        args["peft"] = str(adapter_dir)
    elif (adapter_dir / "config.json").is_file():  # full fine-tuning saved the whole model
        args["pretrained"] = str(adapter_dir)
    else:
        raise MathtuneError(f"no PEFT adapter or model in {adapter_dir}; train first or check the run dir")
    return args


def run_lm_eval(
    tasks: list[str],
    model: Any,
    *,
    data_dir: Path | None,
    subset: str = "main",
    samples: list[int] | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    max_gen_toks: int | None = None,
    batch_size: int = 1,
    task_dir: Path | None = None,
    apply_chat_template: bool = False,
) -> dict[str, Any]:
    """`lm_eval.simple_evaluate` on our task YAMLs. `model`: an `HFLM` or a dict of `hf` model args.

    `samples` (test-row indices) and `limit` (first N rows) are lm-eval's own, mutually exclusive.
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    configs = {name: task_config(name, data_dir, subset) for name in tasks}
    if data_dir is not None:
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the json builder needs no network
    with tempfile.TemporaryDirectory(prefix="mathtune-lm-eval-") as tmp:
        folder = write_task_dir(configs, task_dir or Path(tmp))
        manager = TaskManager(include_path=str(folder), include_defaults=False)
        is_args = isinstance(model, dict)
        raw = simple_evaluate(
            model="hf" if is_args else model, model_args=model if is_args else None, tasks=list(tasks),
            num_fewshot=num_fewshot, batch_size=batch_size, limit=limit,
            samples={name: list(samples) for name in tasks} if samples is not None else None,
            gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None,
            task_manager=manager, log_samples=True,
            # prompt.chat_template: lm-eval wraps the whole prompt (shots included) as one user turn,
            # as prompts.render_prompts does for training and `mathtune eval`.
            apply_chat_template=apply_chat_template,
        )
    if raw is None:
        raise MathtuneError("lm-eval returned no results (non-zero rank?)")
    return {"tasks": configs, "raw": raw}


def summarize_lm_eval(raw: dict[str, Any]) -> dict[str, Any]:
    """Scores in our metrics.json shape, and per-problem outputs and extracted answers."""
    out: dict[str, Any] = {}
    for task, result in raw["results"].items():
        scores = {
            name: {"exact_match": result[f"exact_match,{name}"], "stderr": result[f"exact_match_stderr,{name}"]}
            for name in FILTER_NAMES if f"exact_match,{name}" in result
        }
        per_doc: dict[int, dict[str, Any]] = {}
        for sample in raw.get("samples", {}).get(task, []):
            row = per_doc.setdefault(sample["doc_id"], {"doc_id": sample["doc_id"], "prompt":
                                                         sample["arguments"][0][0], "output": sample["resps"][0][0],
                                                         "extracted": {}, "correct": {}})
            row["extracted"][sample["filter"]] = sample["filtered_resps"][0]
            row["correct"][sample["filter"]] = bool(sample["exact_match"])
        out[task] = {"n": raw["n-samples"][task]["effective"], "scores": scores,
                     "samples": [per_doc[k] for k in sorted(per_doc)]}
    return out


def lm_eval_record(result: dict[str, Any]) -> dict[str, Any]:
    """What `lm_eval.json` holds: scores, per-problem answers, the resolved tasks and lm-eval's config."""
    from lm_eval.utils import handle_non_serializable

    raw = result["raw"]
    record = {"summary": summarize_lm_eval(raw), "tasks": result["tasks"], "config": raw.get("config", {}),
              "versions": raw.get("versions", {}), "n-samples": raw.get("n-samples", {}),
              "lm_eval_version": _lm_eval_version()}
    return json.loads(json.dumps(record, default=handle_non_serializable))


def headline(record: dict[str, Any]) -> dict[str, Any]:
    """Per task: n and scores, for run cards and the terminal."""
    return {task: {"n": entry["n"], "scores": entry["scores"]} for task, entry in record["summary"].items()}


def _lm_eval_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("lm-eval")
    except metadata.PackageNotFoundError:
        return None


