"""A verifier: the base causal LM's backbone with a scalar head (transformers' *ForSequenceClassification
with one label, the usual outcome-reward-model layout) and a LoRA adapter; saved as a PEFT adapter
whose `modules_to_save` holds the head, so `AutoPeftModelForSequenceClassification` loads it too.

Why a solution-level head and not the GSM8K paper's token-level value head: the paper's head predicts
correctness at every token and uses the last one to rank; mathtune ranks whole solutions only, and
one prediction per solution from the last token is the same forward pass with one label per sample
instead of one per token, which is what a 135M model on a CPU can train in minutes (TRL's reward
models and most outcome verifiers since use it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mathtune.data.batching import common_prefix_length, pad_rows
from mathtune.errors import MathtuneError


def scalar_head_model(causal_lm: Any, tokenizer: Any) -> Any:
    """The *ForSequenceClassification model of `causal_lm`'s architecture (one output, BCE loss),
    with the causal LM's backbone weights; the head starts at random (transformers' init)."""
    from transformers import AutoModelForSequenceClassification

    config = causal_lm.config.__class__.from_dict(causal_lm.config.to_dict())
    config.num_labels = 1
    config.problem_type = "multi_label_classification"  # one logit, BCEWithLogits on a 0/1 label
    config.pad_token_id = tokenizer.pad_token_id  # the head reads each row's last non-pad token
    try:
        model = AutoModelForSequenceClassification.from_config(config)
    except ValueError as exc:
        raise MathtuneError(f"verifier: {type(causal_lm).__name__} has no sequence-classification form in "
                            f"transformers ({str(exc).splitlines()[0][:120]})") from None
    backbone = causal_lm.base_model_prefix
    missing, unexpected = getattr(model, backbone).load_state_dict(getattr(causal_lm, backbone).state_dict(),
                                                                   strict=False)
    if missing or unexpected:
        raise MathtuneError(f"verifier: backbone weights do not fit (missing {missing[:3]}, unexpected "
                            f"{unexpected[:3]})")
    return model.to(device=next(causal_lm.parameters()).device, dtype=next(causal_lm.parameters()).dtype)


def lora_verifier(model: Any, r: int, alpha: int) -> Any:
    from peft import LoraConfig, TaskType, get_peft_model

    # task SEQ_CLS: PEFT trains and saves the `score` head in full beside the LoRA weights
    return get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=alpha, lora_dropout=0.0,
                                            target_modules="all-linear"))


def load_verifier(verifier_dir: Path, causal_lm: Any, tokenizer: Any) -> Any:
    from peft import PeftModel

    adapter = verifier_dir / "adapter" if (verifier_dir / "adapter").is_dir() else verifier_dir
    if not (adapter / "adapter_config.json").is_file():
        raise MathtuneError(f"no verifier at {verifier_dir}: train one with `mathtune verifier train`")
    return PeftModel.from_pretrained(scalar_head_model(causal_lm, tokenizer), adapter).eval()


def verifier_texts(prompt: str, outputs: list[str]) -> list[str]:
    """What the verifier reads: the problem's prompt and each solution, as the generator saw them."""
    return [prompt + output for output in outputs]


@torch.inference_mode()
def score_texts(model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int,
                autocast: Any = None) -> list[float]:
    """The verifier's probability that each text's solution is right."""
    import contextlib

    device = next(model.parameters()).device
    scores: list[float] = []
    for start in range(0, len(texts), batch_size):
        encoded = encode(tokenizer, texts[start : start + batch_size], max_length)
        with autocast or contextlib.nullcontext():
            logits = model(**{k: v.to(device) for k, v in encoded.items()}).logits
        scores += torch.sigmoid(logits.float()[:, 0]).tolist()
    return scores


def score_solutions(model: Any, tokenizer: Any, prompt: str, outputs: list[str], max_length: int,
                    autocast: Any = None, rows: int = 4) -> list[float]:
    """The verifier's probability for each of one problem's solutions, the prompt read once per
    `rows` solutions.

    The k solutions of a problem start with the same prompt tokens (about half of each text). Those
    are run once, and their KV cache is repeated to `rows` rows; each row then reads its own solution
    (right-padded) on top, and the scalar head reads its last real token. Solutions are grouped by
    length, so little of a group is padding. The same scores as `score_texts` (fp32:
    tests/evaluate/test_verifier.py) for about half the tokens. Texts longer than `max_length`, which
    `score_texts` cuts from the left, go through `score_texts`."""
    texts = verifier_texts(prompt, outputs)
    ids = [tokenizer(text)["input_ids"] for text in texts]
    if len(texts) < 2 or max(len(x) for x in ids) > max_length:
        return score_texts(model, tokenizer, texts, max_length, len(texts), autocast)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    scores: dict[int, float] = {}
    for start in range(0, len(order), rows):
        group = order[start : start + rows]
        scores.update(zip(group, _score_shared_prefix(model, tokenizer, [ids[i] for i in group], autocast),
                          strict=True))
    return [scores[i] for i in range(len(ids))]


@torch.inference_mode()
def _score_shared_prefix(model: Any, tokenizer: Any, ids: list[list[int]], autocast: Any) -> list[float]:
    import contextlib

    from transformers import DynamicCache

    common = common_prefix_length(ids)
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone, head = getattr(core, core.base_model_prefix), core.score
    device = next(model.parameters()).device
    suffixes = [row[common:] for row in ids]
    input_ids, suffix_mask = pad_rows(suffixes, tokenizer.pad_token_id, device, left=False)
    width = input_ids.shape[1]
    mask = torch.cat([suffix_mask.new_ones(len(ids), common), suffix_mask], dim=1)
    positions = torch.arange(common, common + width, device=device).expand(len(ids), width)
    with autocast or contextlib.nullcontext():
        cache = DynamicCache(config=core.config)
        if common:
            backbone(input_ids=torch.tensor([ids[0][:common]], device=device), past_key_values=cache,
                     use_cache=True)
            cache.batch_repeat_interleave(len(ids))
        hidden = backbone(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                          past_key_values=cache, use_cache=True).last_hidden_state
        last = torch.tensor([len(x) - 1 for x in suffixes], device=device)
        logits = head(hidden[torch.arange(len(ids), device=device), last])
    return torch.sigmoid(logits.float()[:, 0]).tolist()


def encode(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Right padding (the head finds the last real token), and truncation from the left: a solution's
    end, where its answer is, matters more than the start of a long prompt."""
    tokenizer.truncation_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True, padding_side="right", truncation=True,
                     max_length=max_length)
