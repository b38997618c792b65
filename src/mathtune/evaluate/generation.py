"""Generation backends behind one interface over lists of requests (batching is the backend's job).

`HFBackend` wraps a transformers model (optionally with a PEFT adapter). Greedy decoding with
per-sequence stop strings; prompts are length-sorted so a batch pads little, and the output is cut
at the first stop string exactly as lm-eval-harness cuts at `until`. Causal models decode in our
own KV-cache loop (`evaluate/decoding.py`: finished rows leave the batch, optional calculator);
seq2seq models use `generate`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from mathtune.data.batching import IGNORE
from mathtune.models.heads import nll_at_labels
from mathtune.speedups.attention import use_varlen_sdpa


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    stop: tuple[str, ...]
    max_new_tokens: int
    calculator: bool = False  # insert the calculator's result after each '<<expr=' (causal models)
    loop_stop: tuple[int, int] | None = None  # (repeats, min_tokens): end a looping row (causal models)


@dataclass(frozen=True)
class Generation:
    text: str  # cut at the first stop string
    truncated: bool  # hit max_new_tokens without a stop string or EOS
    new_tokens: int
    calculator_calls: int = 0


class Backend(Protocol):
    def generate(
        self,
        requests: list[GenerationRequest],
        *,
        sample: bool = False,
        temperature: float = 1.0,
        seed: int = 0,
    ) -> list[Generation]: ...

    def target_nll(self, pairs: list[tuple[str, str]]) -> list[tuple[float, int]]: ...


def sample_seed(seed: int, key: str, index: int) -> int:
    """The random stream of sample `index` of the problem `key`: stable across processes and runs."""
    digest = hashlib.sha256(f"{seed}\0{key}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """Text before the earliest stop string, and whether one was found."""
    cuts = [text.find(s) for s in stop if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


class HFBackend:
    def __init__(
        self, model: Any, tokenizer: Any, device: torch.device, seq2seq: bool, batch_size: int
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device
        self.seq2seq = seq2seq
        self.batch_size = batch_size
        self.share_common_prefix = True  # prompts' common leading tokens prefilled once (decoding.py)
        if not seq2seq:
            tokenizer.padding_side = "left"  # generation continues from the right edge of each row
            use_varlen_sdpa(model.get_base_model() if hasattr(model, "get_base_model") else model)

    def generate(
        self,
        requests: list[GenerationRequest],
        *,
        sample: bool = False,
        temperature: float = 1.0,
        seed: int = 0,
    ) -> list[Generation]:
        # Longest prompts first: a seq2seq chunk pads little, and in the causal loop a prompt that
        # joins the running batch is never wider than the rows already there.
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i].prompt))
        results: dict[int, Generation] = {}
        if not self.seq2seq:  # one continuous batch of at most batch_size rows (evaluate/decoding.py)
            ordered = [requests[i] for i in order]
            results = dict(zip(order, self._decode_causal(ordered, sample, temperature, seed), strict=True))
            return [results[i] for i in range(len(requests))]
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = [requests[i] for i in chunk]
            for index, generation in zip(
                chunk, self._generate_seq2seq(batch, sample, temperature, seed + start), strict=True
            ):
                results[index] = generation
        return [results[i] for i in range(len(requests))]

    @torch.inference_mode()
    def _generate_seq2seq(
        self, batch: list[GenerationRequest], sample: bool, temperature: float, seed: int
    ) -> list[Generation]:
        encoded = self.tokenizer([r.prompt for r in batch], return_tensors="pt", padding=True).to(self.device)
        stops = sorted({s for r in batch for s in r.stop})
        max_new = max(r.max_new_tokens for r in batch)
        kwargs: dict[str, Any] = {
            "do_sample": sample,
            "max_new_tokens": max_new,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if sample:
            torch.manual_seed(seed)
            kwargs.update(temperature=temperature, top_p=1.0, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if stops:
            kwargs.update(stop_strings=stops, tokenizer=self.tokenizer)
        # Only seq2seq gets here: the decoder's output holds the new tokens alone, no prompt to cut off.
        output = self.model.generate(**encoded, **kwargs)
        return [self._finish(row, request) for row, request in zip(output, batch, strict=True)]

    def _decode_causal(
        self, batch: list[GenerationRequest], sample: bool, temperature: float, seed: int
    ) -> list[Generation]:
        from mathtune.evaluate.decoding import decode_batch

        decoded = decode_batch(
            self.model, self.tokenizer, [r.prompt for r in batch], [r.stop for r in batch],
            [r.max_new_tokens for r in batch], sample=sample, temperature=temperature, seed=seed,
            calculator=[r.calculator for r in batch], share_common_prefix=self.share_common_prefix,
            max_rows=self.batch_size, loop_stops=[r.loop_stop for r in batch],
        )
        return [self._causal_generation(result, request) for result, request in zip(decoded, batch, strict=True)]

    def sample(self, requests: list[GenerationRequest], keys: list[str], k: int, *, temperature: float = 1.0,
               top_p: float = 1.0, seed: int = 0, share_prefix: bool = True, first: int = 0
               ) -> list[list[Generation]]:
        """Samples first..k-1 of each request (k - first solutions). Sample j of the request keyed
        `keys[i]` draws from its own random stream (`sample_seed(seed, key, j)`), so it is the same
        whatever batch, order or resume it is decoded in, and k = 32 extends k = 16 with first = 16.
        Causal models: with `share_prefix` the samples share one prefill of the prompt (its KV cache
        expanded to k - first rows); without, the prompt is prefilled once per sample (the same
        samples, slower: kept to measure and test the shared prefix)."""
        if self.seq2seq:
            if first:
                raise ValueError("seq2seq samples come from one generate() per problem and cannot be extended")
            return [self._sample_seq2seq(request, key, k, temperature, top_p, seed)
                    for request, key in zip(requests, keys, strict=True)]
        from mathtune.evaluate.decoding import decode_batch

        count = k - first
        # batch_size counts decoded rows (problems x samples); one continuous batch, longest prompts first
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i].prompt))
        batch = [requests[i] for i in order]
        seeds = [sample_seed(seed, keys[i], j) for i in order for j in range(first, k)]
        copies, prompts = (count, batch) if share_prefix else (1, [r for r in batch for _ in range(count)])
        decoded = decode_batch(
            self.model, self.tokenizer, [r.prompt for r in prompts], [r.stop for r in prompts],
            [r.max_new_tokens for r in prompts], sample=True, temperature=temperature, top_p=top_p,
            calculator=[r.calculator for r in prompts], copies=copies, row_seeds=seeds,
            share_common_prefix=self.share_common_prefix, max_rows=max(self.batch_size, count),
            loop_stops=[r.loop_stop for r in prompts])
        results = {index: [self._causal_generation(result, requests[index])
                           for result in decoded[slot * count : (slot + 1) * count]]
                   for slot, index in enumerate(order)}
        return [results[i] for i in range(len(requests))]

    def _sample_seq2seq(self, request: GenerationRequest, key: str, k: int, temperature: float, top_p: float,
                        seed: int) -> list[Generation]:
        encoded = self.tokenizer([request.prompt], return_tensors="pt").to(self.device)
        torch.manual_seed(sample_seed(seed, key, 0))
        kwargs: dict[str, Any] = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0,
                                  "num_return_sequences": k, "max_new_tokens": request.max_new_tokens,
                                  "pad_token_id": self.tokenizer.pad_token_id}
        if request.stop:
            kwargs.update(stop_strings=list(request.stop), tokenizer=self.tokenizer)
        with torch.inference_mode():
            output = self.model.generate(**encoded, **kwargs)  # the encoder runs once for the k samples
        return [self._finish(row, request) for row in output]

    def _causal_generation(self, result: Any, request: GenerationRequest) -> Generation:
        text, stopped = cut_at_stop(self.tokenizer.decode(result.tokens, skip_special_tokens=True), request.stop)
        # a row the repetition stop ended counts as truncated: it was looping towards its cap
        truncated = not stopped and not result.hit_eos and (len(result.tokens) >= request.max_new_tokens
                                                           or result.looped)
        return Generation(text, truncated, len(result.tokens), result.calculator_calls)

    def _finish(self, ids: torch.Tensor, request: GenerationRequest) -> Generation:
        special = {self.tokenizer.pad_token_id, self.tokenizer.eos_token_id}
        tokens = [t for t in ids.tolist() if t not in special]
        hit_eos = self.tokenizer.eos_token_id in ids.tolist()
        text, stopped = cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), request.stop)
        truncated = not stopped and not hit_eos and len(tokens) >= request.max_new_tokens
        return Generation(text=text, truncated=truncated, new_tokens=len(tokens))

    @torch.inference_mode()
    def target_nll(self, pairs: list[tuple[str, str]]) -> list[tuple[float, int]]:
        """Summed negative log-likelihood of each target given its prompt, and its token count."""
        results = []
        for start in range(0, len(pairs), self.batch_size):
            results += self._nll_batch(pairs[start : start + self.batch_size])
        return results

    def _nll_batch(self, pairs: list[tuple[str, str]]) -> list[tuple[float, int]]:
        from mathtune.data.batching import causal_example, padded_batch, seq2seq_batch, seq2seq_example

        if self.seq2seq:
            examples = [seq2seq_example(self.tokenizer, p, t, 1024) for p, t in pairs]
            batch = seq2seq_batch(examples, self.tokenizer.pad_token_id)
        else:
            examples = [causal_example(self.tokenizer, p, t, 2048, "completion") for p, t in pairs]
            batch = padded_batch(examples, self.tokenizer.pad_token_id)  # right padding: positions from 0
        batch = {k: v.to(self.device) for k, v in batch.items()}
        if self.seq2seq:
            labels = batch["labels"]
            logits = self.model(**batch).logits
            keep = labels != IGNORE
            logits, targets, rows = logits[keep], labels[keep], keep.nonzero()[:, 0]
            token_nll = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
        else:
            token_nll, rows = nll_at_labels(self.model, batch)
        nll = torch.zeros(len(pairs), device=token_nll.device).index_add_(0, rows, token_nll)
        counts = torch.bincount(rows, minlength=len(pairs))
        return [(float(n), int(c)) for n, c in zip(nll, counts, strict=True)]
