"""Tiny real-architecture models, a tokenizer trained in a second, and GSM8K-shaped data."""

from __future__ import annotations

import json
import random
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
NAMES = ["Tom", "Ann", "Raj", "Mia", "Lee", "Zoe"]
THINGS = ["apples", "pens", "books", "coins", "cards"]


def console_script() -> str:
    """The installed `mathtune` script of the Python running the tests: beside its interpreter (a
    virtualenv need not be on PATH), else on PATH."""
    beside = Path(sys.executable).parent / "mathtune"
    return str(beside) if beside.is_file() else shutil.which("mathtune") or "mathtune"


def synthetic_problem(rng: random.Random) -> dict[str, str]:
    """A two-step word problem in GSM8K's format, calculator annotations included."""
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    a, b, c = rng.randint(2, 20), rng.randint(2, 20), rng.randint(2, 5)
    total = a + b
    final = total * c
    question = f"{name} has {a} {thing} and buys {b} more. Then {name} gets {c} times as many. How many {thing}?"
    answer = (
        f"{name} has {a} + {b} = <<{a}+{b}={total}>>{total} {thing}.\n"
        f"Then {total} * {c} = <<{total}*{c}={final}>>{final} {thing}.\n#### {final}"
    )
    socratic = (
        f"How many {thing} after buying? ** {name} has {a} + {b} = <<{a}+{b}={total}>>{total} {thing}.\n"
        f"How many in the end? ** Then {total} * {c} = <<{total}*{c}={final}>>{final} {thing}.\n#### {final}"
    )
    return {"question": question, "answer": answer, "socratic": socratic}


def write_gsm8k_dir(root: Path, train: int = 48, test: int = 16, seed: int = 0) -> Path:
    """A data dir laid out like ../shared/datasets (gsm8k/{train,test}[_socratic].jsonl)."""
    rng = random.Random(seed)
    folder = root / "gsm8k"
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train), ("test", test)):
        rows = [synthetic_problem(rng) for _ in range(count)]
        with open(folder / f"{split}.jsonl", "w") as main, open(folder / f"{split}_socratic.jsonl", "w") as soc:
            for row in rows:
                main.write(json.dumps({"question": row["question"], "answer": row["answer"]}) + "\n")
                soc.write(json.dumps({"question": row["question"], "answer": row["socratic"]}) + "\n")
    return root


def train_tokenizer(texts: list[str]):
    """A byte-level BPE of ~400 tokens: enough for the real tokenization code paths."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<pad>",
                                   bos_token="<|endoftext|>", unk_token="<|endoftext|>")


def tiny_config(arch: str, vocab_size: int, pad_id: int, eos_id: int):
    from transformers import LlamaConfig, PhiConfig, T5Config

    if arch == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                           pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=eos_id, tie_word_embeddings=True,
                           initializer_range=0.2)  # wide enough that logits can move under LoRA
    if arch == "phi":
        return PhiConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=512, pad_token_id=pad_id,
                         eos_token_id=eos_id, bos_token_id=eos_id, initializer_range=0.2)
    if arch == "t5":
        return T5Config(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                        num_heads=4, pad_token_id=pad_id, eos_token_id=eos_id, decoder_start_token_id=pad_id)
    raise ValueError(arch)


def make_tiny_model(arch: str, out_dir: Path, texts: list[str], seed: int = 0) -> Path:
    """Save a randomly initialised model of a real architecture with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    tokenizer = train_tokenizer(texts)
    config = tiny_config(arch, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    torch.manual_seed(seed)
    auto = AutoModelForSeq2SeqLM if arch == "t5" else AutoModelForCausalLM
    model = auto.from_config(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def saved_bytes(run: Callable[[], Any], weights: Any) -> int:
    """Bytes of the distinct storages autograd keeps while `run()` builds a graph; the storages of
    `weights` (parameters, saved as views) are not counted. `run` must return what it built, so
    nothing saved is freed (and its address reused) before counting ends."""
    import torch

    skip = {p.untyped_storage().data_ptr() for p in weights}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.untyped_storage().data_ptr() not in skip:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        built = run()
    assert built is not None
    return sum(storages.values())


class CountingKernels:
    """The C kernels, counting the calls to each (a test can then tell that they really ran)."""

    def __init__(self, kernels: Any) -> None:
        self.kernels, self.calls = kernels, {}

    def __getattr__(self, name: str) -> Any:
        function = getattr(self.kernels, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return function(*args, **kwargs)

        return counted


def built_cpu_kernels() -> Any:
    """The C kernels. Skips where there is no C compiler (torch ops then run instead); fails where there is
    one and the build does not work."""
    import shutil
    import sys

    import pytest

    from mathtune.speedups.cpu_kernels import load_cpu_kernels

    if sys.platform != "linux" or not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler here: the torch path runs instead of the C kernels")
    kernels = load_cpu_kernels()
    assert kernels is not None, "a C compiler is here but the C kernels did not build"
    return kernels


STOP = ("Question:", "\n\n")


def gsm8k_requests(data_dir: Path, count: int = 8, max_new: int = 20, calculator: bool = False) -> list:
    """Greedy/sampling requests for the first `count` test questions, in the plain Q/A form."""
    from mathtune.evaluate.generation import GenerationRequest

    lines = (data_dir / "gsm8k" / "test.jsonl").read_text().splitlines()[:count]
    return [GenerationRequest(f"Question: {json.loads(line)['question']}\nAnswer:", STOP, max_new, calculator)
            for line in lines]
