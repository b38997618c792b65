"""A batched decoding loop for causal LMs (greedy or sampled, optionally calculator-augmented), and
majority voting over sampled solutions (self-consistency, maj@k).

Why our own loop instead of `model.generate`: a row that has written a stop string leaves the batch
at once (its KV-cache rows are dropped), so a batch costs the sum of its outputs' lengths instead of
`batch size x the longest output`. Stop strings are checked per row on the decoded tail.

Calculator (the GSM8K paper's trick): when a row's text ends in an open annotation ``<<48/2=``, the
calculator's ``24>>`` is forced into that row one token per step, so rows stay aligned and the
batch never has to be re-padded. Greedy results do not depend on the batch size: positions come from
each row's own attention mask, exactly as `generate` computes them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mathtune.data.batching import common_prefix_length, pad_rows, varlen_boundaries

Prefill = tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]  # last logits, KV cache, mask, last positions
SHARED_PREFIX_MIN_TOKENS = 32  # below this a shared prefill saves less than the padded suffix step costs
STOP_WINDOW = 24  # tokens decoded to look for a stop string; stop strings are a few tokens long
SAMPLER = "inverse-cdf"  # how a sampled token is drawn (draw_tokens); recorded in sampling fingerprints
DRAW_BLOCK = 256  # tokens per block of the two-level cumulative sum in draw_tokens
# Recorded in every evaluation's reproducibility record: how rows were batched (causal models).
CONTINUOUS_BATCHING = "continuous: at most batch_size rows; prompts join as rows finish (longest first)"


@dataclass
class _Row:
    index: int
    stop: tuple[str, ...]
    max_new_tokens: int
    calculator: bool
    loop_stop: tuple[int, int] | None = None  # (repeats, min_tokens): end the row when its tail loops
    tokens: list[int] = field(default_factory=list)
    forced: list[int] = field(default_factory=list)  # calculator tokens still to feed
    calls: int = 0
    hit_eos: bool = False
    stopped: bool = False
    looped: bool = False


@dataclass(frozen=True)
class Decoded:
    tokens: list[int]  # generated ids, EOS excluded
    hit_eos: bool
    stopped: bool  # a stop string appeared
    calculator_calls: int
    looped: bool = False  # ended by the repetition stop (`repeating_tail`): it would have run to its cap


def decode_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    stops: Sequence[tuple[str, ...]],
    max_new_tokens: Sequence[int],
    *,
    sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    calculator: Sequence[bool] | None = None,
    copies: int = 1,
    row_seeds: Sequence[int] | None = None,
    top_p: float = 1.0,
    share_common_prefix: bool = True,
    max_rows: int | None = None,
    loop_stops: Sequence[tuple[int, int] | None] | None = None,
) -> list[Decoded]:
    """Decode every prompt until EOS, a stop string or its token cap; left padding, one KV cache.

    Continuous batching: at most `max_rows` rows decode at once (None: all of them). As rows finish,
    the next prompts (in the given order) are prefilled and join the running batch, so the batch
    stays full instead of draining to a few long rows before the next chunk starts. A row's tokens do
    not depend on when it was admitted: every row keeps its own positions and padding mask.

    `copies` > 1 (sampling k solutions of one problem): each prompt is prefilled once and its KV
    cache expanded to `copies` rows, so the k samples share the prompt's prefill; the result holds
    prompt i's copies at ``i * copies + j``. `row_seeds` (one per result row) gives every row its own
    random stream, so a sample depends on its seed alone, not on the batch it was decoded in. With
    one shared `seed` instead, samples depend on the admission order (fixed by `prompts`' order and
    `max_rows`): reproducible, not batch-invariant.

    `share_common_prefix`: when the prompts begin with the same tokens (fixed few-shot examples, a
    chat template's system turn), that prefix is prefilled once (`prefill_common_prefix`).

    `loop_stops` (one per prompt, None: off): a row whose tokens end in `repeats` copies of one block
    spanning `min_tokens` tokens ends there (`repeating_tail`), marked `looped`, instead of decoding
    the loop to its cap."""
    device = next(model.parameters()).device
    total = len(prompts) * copies
    rows = [_Row(i, tuple(stops[i // copies]), max_new_tokens[i // copies],
                 bool(calculator and calculator[i // copies]), loop_stops[i // copies] if loop_stops else None)
            for i in range(total)]
    if row_seeds is not None and len(row_seeds) != total:
        raise ValueError(f"row_seeds: {len(row_seeds)} seeds for {total} rows")
    generators: list[torch.Generator] | None = None
    if sample and row_seeds is not None:
        generators = [torch.Generator(device=device).manual_seed(s) for s in row_seeds]
    generator = torch.Generator(device=device).manual_seed(seed) if sample else None
    eos = _eos_ids(model, tokenizer)
    capacity = total if max_rows is None else max(max_rows, copies)
    with torch.inference_mode():
        prefill = _Prefiller(model, tokenizer, prompts, device, share_common_prefix)
        pending = list(range(len(prompts)))[::-1]  # popped from the end: the given order
        batch: _Batch | None = None
        while True:
            live = batch.live if batch is not None else 0
            admit = min((capacity - live) // copies, len(pending))
            joins = batch is None or live == 0 or (
                batch.flexible and capacity - live >= _admit_threshold(capacity, copies))
            if admit and joins:
                group = [pending.pop() for _ in range(admit)]
                joining = _Batch.start(prefill(group), [i * copies + j for i in group for j in range(copies)], copies)
                batch = joining if batch is None or live == 0 else batch.merged(joining, model)
            if batch is None or batch.live == 0:
                break
            logits = batch.logits
            live_slots = [slot for slot, row in enumerate(batch.slots) if row is not None]
            if generators is not None:
                picked = _choose_per_row(logits[live_slots], temperature, top_p,
                                         [generators[batch.slots[s]] for s in live_slots])
                chosen = dict(zip(live_slots, picked, strict=True))
            else:
                drawn = _choose(logits, sample, temperature, generator, top_p).tolist()
                chosen = {slot: drawn[slot] for slot in live_slots}
            next_ids = [0] * len(batch.slots)  # a finished row's slot is fed a dummy token until it is dropped
            for slot in live_slots:
                token = _advance(rows[batch.slots[slot]], chosen[slot], tokenizer, eos)
                if token is None:
                    batch.slots[slot] = None
                else:
                    next_ids[slot] = token
            if batch.live == 0:
                continue  # the next prompts, if any, start a new batch
            if batch.dead >= _dead_threshold(len(batch.slots), bool(pending) and batch.flexible):
                next_ids = batch.compact(next_ids)
            batch.step(model, next_ids)
    return [Decoded(r.tokens, r.hit_eos, r.stopped, r.calls, r.looped) for r in rows]


def _admit_threshold(capacity: int, copies: int) -> int:
    """Free rows that trigger an admission: each one costs a prefill and a copy of the batch's KV
    cache, so new prompts join in groups (an eighth of the batch) rather than one at a time."""
    return max(copies, capacity // 8)


def _dead_threshold(rows: int, admitting: bool) -> int:
    """Finished rows that trigger dropping them from the cache. Dropping copies the whole cache;
    keeping a finished row costs its share of each step. While prompts wait, finished rows are
    replaced at the next admission instead; in the tail, they are dropped once an eighth is dead."""
    return rows + 1 if admitting else max(1, rows // 8)


class _Prefiller:
    """Prefills groups of prompts as they are admitted. The prompts' common leading tokens (when
    long enough) are prefilled once for the whole call and reused by every group."""

    def __init__(self, model: Any, tokenizer: Any, prompts: Sequence[str], device: torch.device,
                 share_common_prefix: bool) -> None:
        self.model, self.tokenizer, self.prompts, self.device = model, tokenizer, prompts, device
        self.ids: list[list[int]] = []
        self.common = 0
        self.prefix_cache: Any = None
        if share_common_prefix and len(prompts) > 1:
            self.ids, self.common = common_prefix_ids(tokenizer, prompts)
        if self.common >= SHARED_PREFIX_MIN_TOKENS:
            self.prefix_cache = prefill_prefix(model, self.ids[0][: self.common], device)

    def __call__(self, group: list[int]) -> Prefill:
        if self.prefix_cache is not None:
            return prefill_suffixes(self.model, self.tokenizer, self.prefix_cache,
                                    [self.ids[i] for i in group], self.common, self.device)
        prompts = [self.prompts[i] for i in group]
        if packed_prefill_supported(self.model):
            return prefill_packed(self.model, self.tokenizer, prompts, self.device)
        return prefill_padded(self.model, self.tokenizer, prompts, self.device)


@dataclass
class _Batch:
    """The rows decoding together: one left-padded KV cache, its mask, each row's last position and
    the logits of its next token. `slots[s]` is the result row in slot s, None once it finished."""

    cache: Any
    mask: torch.Tensor
    position: torch.Tensor
    logits: torch.Tensor
    slots: list[int | None]
    flexible: bool  # rows can join the running batch (continuous_batching_supported)

    @classmethod
    def start(cls, prefilled: Prefill, slots: list[int], copies: int) -> _Batch:
        logits, cache, mask, position = prefilled
        if copies > 1:  # the shared prefix: one prefill per prompt, its cache repeated per sample
            logits, mask, position = (t.repeat_interleave(copies, dim=0) for t in (logits, mask, position))
            cache.batch_repeat_interleave(copies)
        return cls(cache, mask, position, logits, list(slots), continuous_batching_supported(cache))

    @property
    def live(self) -> int:
        return sum(row is not None for row in self.slots)

    @property
    def dead(self) -> int:
        return len(self.slots) - self.live

    def compact(self, next_ids: list[int]) -> list[int]:
        """Drop the finished rows (and the padding columns no live row needs any more)."""
        keep = [slot for slot, row in enumerate(self.slots) if row is not None]
        self._select(keep)
        return [next_ids[slot] for slot in keep]

    def _select(self, keep: list[int]) -> None:
        if len(keep) < len(self.slots):
            kept = torch.tensor(keep, device=self.mask.device)
            self.cache.batch_select_indices(kept)
            self.mask, self.position, self.logits = self.mask[kept], self.position[kept], self.logits[kept]
            self.slots = [self.slots[slot] for slot in keep]
        first = int(self.mask.any(dim=0).long().argmax())  # leading columns that are padding in every row
        if first and self.flexible:
            trim_left(self.cache, first)
            self.mask = self.mask[:, first:]

    def merged(self, joining: _Batch, model: Any) -> _Batch:
        """This batch's live rows and the newly prefilled ones in one cache, both left-padded to the
        wider of the two."""
        self._select([slot for slot, row in enumerate(self.slots) if row is not None])
        width = max(self.mask.shape[1], joining.mask.shape[1])
        cache = concat_left_padded(model, self.cache, joining.cache, width)
        mask = torch.cat([_pad_left(self.mask, width), _pad_left(joining.mask, width)])
        return _Batch(cache, mask, torch.cat([self.position, joining.position]),
                      torch.cat([self.logits, joining.logits]), self.slots + joining.slots, True)

    def step(self, model: Any, next_ids: list[int]) -> None:
        """Feed one token to every row; the next logits."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.slots), 1)], dim=1)
        self.position = self.position + 1
        ids = torch.tensor(next_ids, device=self.mask.device).unsqueeze(1)
        self.logits = model(input_ids=ids, attention_mask=self.mask, position_ids=self.position,
                            past_key_values=self.cache, use_cache=True).logits[:, -1, :]


def _pad_left(mask: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(mask, (width - mask.shape[1], 0))


def prefill_padded(model: Any, tokenizer: Any, prompts: Sequence[str], device: torch.device) -> Prefill:
    """The usual batched prefill: left padding and a padding mask over the whole batch."""
    encoded = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left")
    input_ids, mask = encoded["input_ids"].to(device), encoded["attention_mask"].to(device)
    position = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    cache = _new_cache(model)
    # logits_to_keep=1: the vocabulary projection of every prompt position is ~20% of the prefill
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=position,
                   past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :]
    return logits, cache, mask, position[:, -1:]


def common_prefix_ids(tokenizer: Any, prompts: Sequence[str]) -> tuple[list[list[int]], int]:
    """Each prompt's token ids (tokenized whole, exactly as the other prefills do) and how many leading
    tokens all share; every prompt keeps at least its last token, whose logits start the decoding."""
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    return ids, common_prefix_length(ids)


def prefill_prefix(model: Any, prefix: list[int], device: torch.device) -> Any:
    """The KV cache (one row) of the tokens every prompt starts with."""
    cache = _new_cache(model)
    model(input_ids=torch.tensor([prefix], device=device), past_key_values=cache, use_cache=True, logits_to_keep=1)
    return cache


def prefill_suffixes(model: Any, tokenizer: Any, prefix_cache: Any, ids: list[list[int]], common: int,
                     device: torch.device) -> Prefill:
    """Repeat the shared prefix's KV cache per row, then prefill the rows' own suffixes (left-padded
    after the prefix) on top of it.

    An 8-shot prompt (lm-eval's gsm8k_cot: the same 8 examples before every question) is ~90 % shared
    prefix; each row then costs its question alone. Rows hold [prefix | padding | suffix]; positions
    come from the mask, so each row sees exactly the positions and keys of its unshared prefill."""
    cache = repeat_cache(model, prefix_cache, len(ids))
    input_ids, suffix_mask = pad_rows([row[common:] for row in ids], tokenizer.pad_token_id, device, left=True)
    mask = torch.cat([suffix_mask.new_ones(len(ids), common), suffix_mask], dim=1)
    position = (mask.cumsum(-1) - 1)[:, common:].masked_fill(suffix_mask == 0, 0)
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=position, past_key_values=cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1, :]
    return logits, cache, mask, position[:, -1:]


def prefill_common_prefix(model: Any, tokenizer: Any, ids: list[list[int]], common: int,
                          device: torch.device) -> Prefill:
    """Prefill the tokens every prompt starts with once, then each row's own suffix on top of it."""
    return prefill_suffixes(model, tokenizer, prefill_prefix(model, ids[0][:common], device), ids, common, device)


def repeat_cache(model: Any, cache: Any, rows: int) -> Any:
    """A new cache holding `rows` copies of a one-row cache (which stays as it is)."""
    repeated = _new_cache(model)
    for index, layer in enumerate(cache.layers):
        repeated.update(layer.keys.expand(rows, -1, -1, -1).contiguous(),
                        layer.values.expand(rows, -1, -1, -1).contiguous(), index)
    return repeated


def concat_left_padded(model: Any, first: Any, second: Any, width: int) -> Any:
    """One cache holding the rows of `first` then those of `second`, each left-padded (zeros) to
    `width` positions: the layout of a batch whose rows end at the same column."""
    cache = _new_cache(model)
    for index, (a, b) in enumerate(zip(first.layers, second.layers, strict=True)):
        keys = torch.cat([_pad_positions(a.keys, width), _pad_positions(b.keys, width)])
        values = torch.cat([_pad_positions(a.values, width), _pad_positions(b.values, width)])
        cache.update(keys, values, index)
    return cache


def trim_left(cache: Any, columns: int) -> None:
    """Drop the first `columns` positions of every layer (padding in every row)."""
    for layer in cache.layers:
        layer.trim_left(columns)


def continuous_batching_supported(cache: Any) -> bool:
    """Rows can join and leave a running batch when every layer is mathtune's growable cache layer."""
    from mathtune.evaluate.kv_cache import GrowingLayer

    return bool(cache.layers) and all(isinstance(layer, GrowingLayer) for layer in cache.layers)


def _pad_positions(t: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, 0, width - t.shape[-2], 0))


def packed_prefill_supported(model: Any) -> bool:
    from mathtune.speedups.attention import VARLEN_SDPA

    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = core.config
    return (getattr(config, "_attn_implementation", None) == VARLEN_SDPA and not config.is_encoder_decoder
            and not getattr(config, "sliding_window", None))


def prefill_packed(model: Any, tokenizer: Any, prompts: Sequence[str], device: torch.device) -> Prefill:
    """Prefill every prompt in one padding-free row, each attending only to itself (causal kernel),
    then lay the KV cache out left-padded for batched decoding.

    With left padding, the padded prefill needs a mask, and SDPA then computes the full square of
    scores for every row of the batch (measured: 45 % of a 5-shot GSM8K prefill). Packed, each prompt
    costs what it costs alone, exactly the computation of a batch-1 prefill such as lm-eval's."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    lengths = [len(x) for x in ids]
    boundaries = varlen_boundaries(lengths, device)
    packed = torch.tensor([[t for row in ids for t in row]], device=device)
    positions = torch.tensor([[p for n in lengths for p in range(n)]], device=device)
    cache = _new_cache(model)
    hidden = core.base_model(
        input_ids=packed, position_ids=positions, past_key_values=cache, use_cache=True, **boundaries,
    ).last_hidden_state
    logits = core.get_output_embeddings()(hidden[0, boundaries["cu_seq_lens_q"][1:].long() - 1])
    width = max(lengths)
    mask = torch.zeros(len(ids), width, dtype=torch.long, device=device)
    for row, n in enumerate(lengths):
        mask[row, width - n :] = 1
    batched = _new_cache(model)
    for layer_index, layer in enumerate(cache.layers):
        keys, values = (_left_padded(t, lengths, width) for t in (layer.keys, layer.values))
        batched.update(keys, values, layer_index)
    position = torch.tensor(lengths, device=device).unsqueeze(1) - 1
    return logits, batched, mask, position


def _left_padded(packed: torch.Tensor, lengths: list[int], width: int) -> torch.Tensor:
    """[1, heads, sum(lengths), dim] -> [batch, heads, width, dim], each row's tokens at the right."""
    out = packed.new_zeros(len(lengths), packed.shape[1], width, packed.shape[3])
    start = 0
    for row, n in enumerate(lengths):
        out[row, :, width - n :] = packed[0, :, start : start + n]
        start += n
    return out


def _choose(logits: torch.Tensor, sample: bool, temperature: float, generator: Any,
            top_p: float = 1.0) -> torch.Tensor:
    if not sample:
        return logits.argmax(dim=-1)
    uniforms = torch.rand(len(logits), generator=generator, device=logits.device)
    return draw_tokens(sampling_probs(logits, temperature, top_p), uniforms)


def _choose_per_row(logits: torch.Tensor, temperature: float, top_p: float,
                    generators: list[torch.Generator]) -> list[int]:
    """One draw per row from the row's own generator: a row's tokens do not depend on its batch."""
    uniforms = torch.cat([torch.rand(1, generator=g, device=logits.device) for g in generators])
    return draw_tokens(sampling_probs(logits, temperature, top_p), uniforms).tolist()


def draw_tokens(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row by inverse CDF: the token whose cumulative-probability interval holds
    u x total (u in [0, 1), one per row). A token of probability 0 is never drawn.

    Why not `torch.multinomial`: for one draw it samples an exponential for every vocabulary entry
    (the Gumbel trick), 49,152 random numbers per row and step for SmolLM2, one row at a time when
    each row has its own generator: 171 ms per 128-row step on 2 CPU cores, against 1.9 ms here
    (`benchmarks/sampling_draw.py`), while the model's forward pass for those 128 tokens takes ~440 ms.
    Here a row needs one uniform. The cumulative sum is two-level so it stays cheap in float64: the
    vocabulary's blocks of DRAW_BLOCK tokens are summed (float32, vectorised), the block is found on
    their cumulative sums, then the token inside it (one float64 cumsum over the whole vocabulary
    took ~14x longer). The distribution is multinomial's; the draws are not, so `SAMPLER` is part of
    a sampling run's fingerprint."""
    rows, vocab = probs.shape
    padded = torch.nn.functional.pad(probs.float(), (0, -vocab % DRAW_BLOCK)) if vocab % DRAW_BLOCK else probs.float()
    blocks = padded.view(rows, -1, DRAW_BLOCK)
    block_cdf = blocks.sum(dim=-1).double().cumsum(dim=-1)
    target = uniforms.double().unsqueeze(1) * block_cdf[:, -1:]  # < the total, since u < 1
    block = torch.searchsorted(block_cdf, target, right=True).clamp_max(blocks.shape[1] - 1)  # mass > 0
    before = block_cdf.gather(1, (block - 1).clamp_min(0)).masked_fill(block == 0, 0.0)
    mass = block_cdf.gather(1, block) - before
    inner_cdf = blocks[torch.arange(rows, device=probs.device), block.squeeze(1)].double().cumsum(dim=-1)
    # where u falls inside the block, rescaled to the block's own float64 sum (its float32 sum may
    # differ in the last bits) and kept below it, so the interval found has mass
    share = ((target - before) / mass).clamp(0.0, 1.0 - 2.0**-40)
    inner = torch.searchsorted(inner_cdf, share * inner_cdf[:, -1:], right=True)
    return (block * DRAW_BLOCK + inner).squeeze(1)


def sampling_probs(logits: torch.Tensor, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """Softmax at `temperature`, restricted to the nucleus (the smallest set of tokens whose
    probability reaches `top_p`, as transformers' TopPLogitsWarper keeps it) and renormalised."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the tokens ranked above each one
    sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)  # the top token always stays
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum(dim=-1, keepdim=True)


def _advance(row: _Row, chosen: int, tokenizer: Any, eos: set[int]) -> int | None:
    """Append this step's token to `row`; the token to feed next, or None when the row is done."""
    token = row.forced.pop(0) if row.forced else chosen
    if token in eos:  # a forced calculator token is never EOS
        row.hit_eos = True
        return None
    row.tokens.append(token)
    tail = tokenizer.decode(row.tokens[-STOP_WINDOW:], skip_special_tokens=True)
    if any(s and s in tail for s in row.stop):
        row.stopped = True
        return None
    if len(row.tokens) >= row.max_new_tokens:
        return None
    if row.loop_stop and not row.forced and repeating_tail(row.tokens, *row.loop_stop):
        row.looped = True
        return None
    if row.calculator and not row.forced:
        row.forced = calculator_tokens(tokenizer, tail)
        row.calls += bool(row.forced)
        # a forced token may not fit under the cap; it is cut there like any other token
    return token


def repeating_tail(tokens: Sequence[int], repeats: int, min_tokens: int, max_period: int = 64) -> bool:
    """Whether `tokens` end in `repeats` copies of one block of at most `max_period` tokens that
    together span at least `min_tokens` tokens: a greedy row caught in a loop (the same sentence
    written again and again), which would otherwise run to its token cap.

    `min_tokens` keeps short legitimate repeats (`0000`, `1 + 1 + 1`, a table's `| |`) from firing:
    a one-token block must repeat `min_tokens` times. Cheap per step: a period is compared only when
    the last token recurs one period earlier."""
    n = len(tokens)
    last = tokens[-1] if n else None
    for period in range(1, min(max_period, n // max(repeats, 2)) + 1):  # a period shorter than the text
        span = period * max(repeats, -(-min_tokens // period))  # at least `repeats` copies, `min_tokens` tokens
        if span > n or tokens[n - 1 - period] != last:
            continue
        tail = list(tokens[n - span:])
        if tail[period:] == tail[:-period]:  # periodic with this period over the whole span
            return True
    return False


def calculator_tokens(tokenizer: Any, text: str) -> list[int]:
    """Tokens of ``result>>`` when `text` ends in an open ``<<expr=`` annotation, else []."""
    from mathtune.evaluate.calculator import complete_calculator_annotation

    value = complete_calculator_annotation(text)
    return [] if value is None else tokenizer.encode(f"{value}>>", add_special_tokens=False)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    found = set(ids if isinstance(ids, list) else [ids]) if ids is not None else set()
    if tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    return found


def _new_cache(model: Any) -> Any:
    """transformers' DynamicCache, its full-attention layers swapped for `GrowingLayer`s."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    config = getattr(model, "config", None)
    try:
        cache = DynamicCache(config=config)
    except TypeError:  # older signatures
        return DynamicCache()
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        from mathtune.evaluate.kv_cache import GrowingLayer

        cache.layers = [GrowingLayer() for _ in cache.layers]
    return cache


def majority_vote(answers: Sequence[float | None],
                  equal: Callable[[float, float], bool] | None = None) -> float | None:
    """The most frequent numeric answer (None votes ignored); ties go to the answer seen first."""
    votes = [a for a in answers if a is not None]
    if not votes:
        return None
    if equal is None:
        counts = Counter(votes)
        best = max(counts.values())
        return next(a for a in votes if counts[a] == best)
    groups: list[list[float]] = []
    for answer in votes:
        for group in groups:
            if equal(group[0], answer):
                group.append(answer)
                break
        else:
            groups.append([answer])
    return max(groups, key=len)[0]  # max keeps the first of equal-length groups


def add_majority_votes(rows: list[dict[str, Any]], backend: Any, requests: Sequence[Any], references: Sequence[str],
                       k: int, temperature: float, seed: int) -> None:
    """Self-consistency: sample `k` solutions per request, vote on their numeric answers, and store
    ``row["majority"] = {"k", "answers", "vote", "correct"}`` beside the greedy result."""
    from mathtune.answers import numbers_equal
    from mathtune.evaluate.extraction import extract_numeric, numeric_match

    repeated = [request for request in requests for _ in range(k)]
    generations = backend.generate(repeated, sample=True, temperature=temperature, seed=seed)
    for index, (row, reference) in enumerate(zip(rows, references, strict=True)):
        texts = [g.text for g in generations[index * k : (index + 1) * k]]
        answers = [extract_numeric(text) for text in texts]
        vote = majority_vote(answers, numbers_equal)
        row["majority"] = {"k": k, "answers": answers, "vote": vote,
                           "correct": vote is not None and numeric_match(f"#### {vote!r}", reference)}


def majority_summary(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """maj@k accuracy (numeric match of the voted answer) and its standard error, or None."""
    from mathtune.evaluate.metrics import mean_and_stderr

    voted = [row["majority"] for row in rows if "majority" in row]
    if not voted:
        return None
    value, stderr = mean_and_stderr([bool(v["correct"]) for v in voted])
    return {f"maj@{voted[0]['k']}": {"exact_match": value, "stderr": stderr, "n": len(voted)}}
