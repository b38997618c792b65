"""Characters a tokenizer cannot write back, added to its vocabulary so mathtune's texts round-trip.

T5's SentencePiece vocabulary has no newline, `{`, `}` or `<`, and its pre-tokenizer drops every
whitespace run (WhitespaceSplit): GSM8K's `<<48/2=24>>` annotations and the `program` strategy's
Python become `<unk>` or lose their line breaks, so a model cannot learn to write them and the
sandbox cannot run what it writes. Byte-level tokenizers (Llama, SmolLM2, Phi) write every text back
exactly and are left untouched: no added token, no resized embedding.

For a tokenizer that fails, `add_missing_characters`
1. makes a Metaspace (SentencePiece-style) pre-tokenizer keep whitespace: without WhitespaceSplit each
   space is a `▁` of its own (indentation is four `▁` tokens, trained ones), and with
   `prepend_scheme="first"` the text after an added token gets no invented leading space;
2. adds each character that still does not survive as an `AddedToken` (not normalized, not special,
   no stripping), so it is cut out before the normalizer and decoded as itself.
`fit_embeddings` then gives the model a row for each new token (the mean of the existing rows, the
same on every load) and records their ids, which the tuning methods make trainable and save.

What stays normalized: a leading space at the very start of a text is dropped by the Metaspace
decoder (as before), and a normalizer such as NFKC still folds non-ASCII look-alikes. Neither changes
what answer extraction or the sandbox see: outputs are compared and run after `strip()`.

Which characters are missing depends on the probe (`probe_text`: every prompt strategy, the ones
registered at run time included), so a new strategy can change them. The characters a run added are
therefore recorded with the run: training writes them, in order, with their ids, to `added_vocab.json`
beside the tuned weights (and to the train card's `data.added_characters` / `data.added_token_ids`).
Whatever loads a run's tuned weights (evaluation, sampling, export, the app, stacked-lora's stage 2,
GRPO's SFT adapter, a verifier) gives the base tokenizer exactly those characters, so they get the
ids the trained rows belong to, whatever strategies exist today (`run_characters`). A run trained
before the record existed falls back to the tokenizer saved beside its weights (its added vocabulary:
the non-special one-character added tokens, by id); only weights with neither use today's probe, as
the base model always does. The whitespace handling (step 1) is decided by the probe as before; a
tokenizer saved beside the tuned weights holds the added tokens, but a T5 tokenizer rebuilds its own
pre-tokenizer when loaded, so it is not used as is. Loading checks that the record's ids, and the
saved tokenizer's, agree with the ids the characters got.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

from mathtune.errors import MathtuneError

NEW_TOKEN_IDS = "mathtune_new_token_ids"  # attribute on the model: ids whose rows the methods train
METASPACE_PARTS = {"Metaspace", "WhitespaceSplit"}
ADDED_VOCAB_FILE = "added_vocab.json"  # beside the tuned weights: the characters the run added, with ids

# GSM8K's first train problem, as its solutions are written (calculator annotations, '#### N').
QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
            "How many clips did Natalia sell altogether in April and May?")
SOLUTION = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
            "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")
# What a model may write in a program beyond the straight-line programs mathtune trains on:
# indentation, tabs, brackets, comparison and bit operators, strings with escapes. (No " ," or " ."
# either: decoders that clean up tokenization spaces would rewrite them.)
PYTHON = ('def rate(x: float) -> dict[str, list[int]]:\n    """Clips per day."""\n'
          "    if x < 2 and x >= 1 or x != 3:\n\treturn {'a': [x ** 2 % 5, x // 2, ~x, x ^ 1, x | 2, x & 3]}\n"
          '    print(f"{x:,}\\n", "a\\tb", `x`, r"C:\\dir")  # costs $5 @ 50%; see [1]\n'
          "answer = rate(2.5)\n")


def probe_text() -> str:
    """Every prompt strategy's prompt, target, shot separator and stop strings (prompts.yaml's and
    those registered so far), filled with a GSM8K problem (its annotated solution, and the program
    made from it), then a freer Python program. Stop strings that are special-token markup (`</s>`,
    `<|im_end|>`) are left out: decoding drops special tokens on purpose."""
    from mathtune.prompts import load_strategies

    return _probe(tuple(load_strategies().values()))


@lru_cache(maxsize=8)
def _probe(strategies: tuple[Any, ...]) -> str:
    from mathtune.data.problems import Problem
    from mathtune.data.programs import solution_to_program

    problem = Problem(id="probe", question=QUESTION, solution=SOLUTION, answer="72")
    program = solution_to_program(SOLUTION)
    parts = []
    for strategy in strategies:
        parts.append(strategy.format_prompt(problem.question) + strategy.format_target(problem, program))
        markup = [stop for stop in strategy.stop if stop.startswith("<") and stop.endswith(">")]
        parts.append(strategy.shot_separator + "".join(stop for stop in strategy.stop if stop not in markup))
    return "".join(parts) + PYTHON


def round_trip(tokenizer: Any, text: str) -> str:
    """The text as the model sees it and writes it: encoded, then decoded as generation decodes."""
    return tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"], skip_special_tokens=True)


def candidate_characters(probe: str) -> list[str]:
    """The probe's characters that may become added tokens, in code-point order (so an id does not
    depend on where the probe first uses its character). Letters, digits and the space are never
    added: an added token is cut out of every word, so an added `x` would split every word holding one."""
    return sorted({ch for ch in probe if not ch.isalnum() and ch != " "})


def missing_characters(tokenizer: Any, probe: str | None = None) -> list[str]:
    """Characters of `probe` (default: `probe_text()`) that do not survive a round trip. Each is tried
    between digits, which every vocabulary has: in context an `<unk>` may swallow its neighbours."""
    return [ch for ch in candidate_characters(probe or probe_text()) if round_trip(tokenizer, f"1{ch}2") != f"1{ch}2"]


def add_missing_characters(tokenizer: Any, probe: str | None = None, characters: list[str] | None = None
                           ) -> list[str]:
    """Make `tokenizer` write `probe` (default: `probe_text()`) back exactly; return the characters it
    gained as added tokens (none for a byte-level tokenizer). Idempotent: on a tokenizer that already
    holds them (one saved after training) it adds nothing.

    `characters`: add exactly these, in this order (a run's recorded ones, `run_characters`), instead
    of those the probe finds missing; the whitespace handling still follows the probe."""
    from tokenizers import AddedToken

    probe = probe or probe_text()
    if characters is not None:
        if characters or round_trip(tokenizer, probe) != probe:
            keep_whitespace(tokenizer)
        held = tokenizer.get_added_vocab()
        new = [ch for ch in characters if ch not in held]
        tokenizer.add_tokens([AddedToken(ch, normalized=False, special=False, lstrip=False, rstrip=False)
                              for ch in new])
        return new
    if round_trip(tokenizer, probe) == probe:
        return []
    keep_whitespace(tokenizer)
    missing = missing_characters(tokenizer, probe)
    tokenizer.add_tokens([AddedToken(ch, normalized=False, special=False, lstrip=False, rstrip=False)
                          for ch in missing])
    written = round_trip(tokenizer, probe)
    if written != probe:  # an unusual pipeline: train anyway, but say where texts still change
        at = next((i for i, (a, b) in enumerate(zip(probe, written, strict=False)) if a != b),
                  min(len(probe), len(written)))
        logging.getLogger("mathtune").warning(
            "tokenizer still changes mathtune's texts after adding %r: %r becomes %r",
            missing, probe[max(0, at - 20):at + 20], written[max(0, at - 20):at + 20])
    return missing


def keep_whitespace(tokenizer: Any) -> None:
    """Swap a SentencePiece-style pre-tokenizer (Metaspace, optionally after WhitespaceSplit) for one
    Metaspace that keeps every space and prepends `▁` only at the start of the text; others stay."""
    from tokenizers import decoders, pre_tokenizers

    backend = tokenizer.backend_tokenizer
    if backend.pre_tokenizer is None:
        return
    state = json.loads(backend.pre_tokenizer.__getstate__())
    parts = state["pretokenizers"] if state["type"] == "Sequence" else [state]
    metaspace = [part for part in parts if part["type"] == "Metaspace"]
    if not metaspace or {part["type"] for part in parts} - METASPACE_PARTS:
        return
    replacement, split = metaspace[0]["replacement"], metaspace[0].get("split", True)
    scheme = "never" if metaspace[0].get("prepend_scheme") == "never" else "first"
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=replacement, prepend_scheme=scheme, split=split)
    if backend.decoder is not None and json.loads(backend.decoder.__getstate__())["type"] == "Metaspace":
        backend.decoder = decoders.Metaspace(replacement=replacement, prepend_scheme=scheme, split=split)


def fit_embeddings(model: Any, tokenizer: Any, added: list[str]) -> list[int]:
    """Give the model a row for each added character and record their ids on it (`NEW_TOKEN_IDS`).

    Rows are added only when the tokenizer outgrew the embedding (T5 checkpoints carry spare rows past
    their vocabulary: t5-small has 32,128 rows for 32,100 tokens). Each new token's input and output
    rows start as the mean of the vocabulary's rows: neutral, and the same on every load, so the base
    model is evaluated the same way each time and the tuning methods start from it."""
    import torch

    ids = tokenizer.convert_tokens_to_ids(added)
    if not ids:
        return []
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # rows set below, deterministically
    known = min(ids)  # rows below the first added token belong to the original vocabulary
    with torch.no_grad():
        for weight in embedding_weights(model):
            weight[ids] = weight[:known].float().mean(0).to(weight.dtype)
    setattr(model, NEW_TOKEN_IDS, list(ids))
    return list(ids)


def embedding_weights(model: Any) -> list[Any]:
    """The input embedding matrix, and the output head's when it is not the same tensor."""
    weights = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not weights[0]:
        weights.append(head.weight)
    return weights


def new_token_ids(model: Any) -> list[int]:
    """Ids `fit_embeddings` added to this model (empty when the tokenizer needed none)."""
    return list(getattr(model, NEW_TOKEN_IDS, []))


def save_tokenizer(tokenizer: Any, out_dir: Path, added: list[str]) -> None:
    """Save the tokenizer beside tuned weights, with the record of the characters this run added
    (`ADDED_VOCAB_FILE`: in order, with their ids; empty when it added none)."""
    tokenizer.save_pretrained(out_dir)
    ids = tokenizer.convert_tokens_to_ids(added) if added else []
    record = {"characters": list(added), "ids": list(ids)}
    (Path(out_dir) / ADDED_VOCAB_FILE).write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")


def recorded_vocab(saved_dir: Path) -> dict[str, int] | None:
    """The characters the run that saved `saved_dir` added, with their ids, in order: from its record,
    else (a run saved before the record) from its saved tokenizer's added vocabulary; None: neither."""
    saved_dir = Path(saved_dir)
    record = saved_dir / ADDED_VOCAB_FILE
    if record.is_file():
        data = json.loads(record.read_text(encoding="utf-8"))
        return dict(zip(data["characters"], data["ids"], strict=True))
    if not (saved_dir / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(saved_dir)
    # mathtune adds one-character, non-special tokens; a tokenizer's own added tokens (T5's <pad>,
    # </s>, <extra_id_N>) are special.
    added = {ch: token_id for token_id, token in saved.added_tokens_decoder.items()
             for ch in [str(token)] if len(ch) == 1 and not token.special}
    return dict(sorted(added.items(), key=lambda item: item[1]))


def run_characters(saved_dir: Path | None) -> list[str] | None:
    """The characters to give the base tokenizer to load the tuned weights in `saved_dir` (see the
    module docstring); None: no tuned weights, or nothing recorded: the probe decides."""
    if saved_dir is None:
        return None
    vocab = recorded_vocab(saved_dir)
    return None if vocab is None else list(vocab)


def check_saved_tokenizer(tokenizer: Any, saved_dir: Any, added: list[str]) -> None:
    """The run's record (or its saved tokenizer) must give the added characters the ids this tokenizer
    does: the trained rows belong to those ids."""
    vocab = recorded_vocab(Path(saved_dir))
    if vocab is None:
        return
    held = tokenizer.get_added_vocab()
    ours = {ch: held.get(ch) for ch in vocab}
    if ours != vocab or any(ch not in vocab for ch in added):
        raise MathtuneError(f"{saved_dir} was trained with other ids for the characters mathtune adds to this "
                            f"tokenizer ({vocab} there, {ours} now); evaluate it with the mathtune that trained it")
