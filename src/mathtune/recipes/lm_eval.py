"""`mathtune lm-eval`: lm-evaluation-harness itself on a base or tuned model (evaluate/lm_eval_bridge.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mathtune.errors import MathtuneError
from mathtune.evaluate.lm_eval_bridge import headline, hf_model_args, lm_eval_record, run_lm_eval


def lm_eval_workflow(cfg: Any, run_dir: Path | None, base: bool, out_dir: Path, tasks: list[str],
                     limit: int | None = None, batch_size: int = 1) -> dict[str, Any]:
    """`mathtune lm-eval`: lm-eval on the base model or a run's tuned model -> out_dir/lm_eval.json.

    Without `limit` lm-eval scores the problems `mathtune eval` draws (eval.num_problems, eval.seed);
    with it, lm-eval's own first-N. A run dir's run_card.json gains an `lm_eval` entry.
    """
    from mathtune.config import load_config
    from mathtune.evaluate.scoring import eval_problems
    from mathtune.io import atomic_write_json
    from mathtune.models.device import choose_placement
    from mathtune.models.loading import resolve_source

    if cfg.data.dataset != "gsm8k":
        raise MathtuneError(f"lm-eval tasks here are GSM8K tasks; data.dataset is {cfg.data.dataset}")
    if cfg.eval.perturbed:
        raise MathtuneError("lm-eval scores the original test problems; eval.perturbed is for `mathtune eval`")
    adapter_dir = None
    if not base:
        if run_dir is None:
            raise MathtuneError("pass a run directory to evaluate its tuned model, or --base")
        run_cfg = load_config(run_dir / "config.yaml", None)
        # the tuned model is prompted as it was trained: with the run's chat-template setting
        cfg = cfg.model_copy(update={"model": run_cfg.model, "prompt": cfg.prompt.model_copy(
            update={"chat_template": run_cfg.prompt.chat_template})})
        adapter_dir = run_dir / "adapter"
    precision = cfg.eval_precision()
    placement = choose_placement(cfg.model.device, precision)
    source = resolve_source(cfg.model.name, cfg.model.gguf_file)
    args = hf_model_args(source.path, adapter_dir, str(placement.compute_dtype).replace("torch.", ""),
                         str(placement.device))
    samples = None if limit else sorted(int(p.id) for p in eval_problems(cfg))
    result = run_lm_eval(tasks, args, data_dir=cfg.resolved_data_dir(), subset=cfg.data.subset, samples=samples,
                         limit=limit, max_gen_toks=cfg.eval.max_new_tokens, batch_size=batch_size,
                         apply_chat_template=cfg.prompt.chat_template)
    record = lm_eval_record(result)
    record["mathtune"] = {"label": "base" if base else "tuned", "model": source.label, "model_args": args,
                          "chat_template": cfg.prompt.chat_template,
                          "problems": "first_n" if limit else {"seed": cfg.eval.seed, "ids": samples}}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "lm_eval.json", record)
    if run_dir is not None:
        _add_to_run_card(run_dir / "run_card.json", record["mathtune"]["label"], headline(record))
    return record


def _add_to_run_card(path: Path, label: str, scores: dict[str, Any]) -> None:
    from mathtune.io import atomic_write_json

    card = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"kind": "run"}
    card.setdefault("lm_eval", {})[label] = scores
    atomic_write_json(path, card)
