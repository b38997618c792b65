"""Write a merged causal LM as a GGUF file with llama.cpp's own writer (`gguf.GGUFWriter`).

The conventions are llama.cpp's `convert_hf_to_gguf.py` (`LlamaModel`, `Qwen2Model`, `TextModel`):
- tensor names come from `gguf.get_tensor_name_map` (model.layers.0.self_attn.q_proj -> blk.0.attn_q);
- Llama's Q and K weights are permuted: Hugging Face's rotary embedding pairs dimension i with
  i + d/2 of a head ("rotate half"), llama.cpp's `llama` kernel pairs 2i with 2i + 1, so each head's
  rows are reordered by `permute` (K with the key/value head count). Qwen2 runs NEOX-style rotary in
  llama.cpp and keeps its weights as they are;
- 1-D tensors (norms, biases) stay float32; 2-D weights are f16, or q8_0 (blocks of 32 weights, one
  f16 scale each: `gguf.quants.quantize`) where a row holds whole blocks, f16 otherwise;
- a tied output head is not written (llama.cpp and transformers reuse token_embd);
- the tokenizer is `tokenizer.ggml.model = gpt2` (byte-level BPE): tokens, token types, merges,
  special token ids and the chat template (`gguf.SpecialVocab` reads them from the saved
  tokenizer files). For a model that came from a GGUF (the embedded SmolLM2), its original
  `tokenizer.*` metadata is copied instead, exactly as llama.cpp wrote it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mathtune.errors import MathtuneError

# transformers model_type -> (llama.cpp architecture, whether Q/K are permuted for llama.cpp's rotary)
GGUF_ARCHITECTURES: dict[str, tuple[str, bool]] = {"llama": ("llama", True), "qwen2": ("qwen2", False)}
QUANTS = ("f16", "q8_0")
SKIPPED_TENSORS = ("rotary_emb.inv_freq",)


def check_gguf_architecture(config: Any) -> None:
    """Refuse, in one line, what this writer cannot write exactly."""
    model_type = getattr(config, "model_type", "?")
    if model_type not in GGUF_ARCHITECTURES:
        raise MathtuneError(f"GGUF export supports {', '.join(GGUF_ARCHITECTURES)} models (Llama, SmolLM, Qwen2); "
                            f"this run's model is '{model_type}': export it with --format hf")
    rope = _rope_parameters(config)
    if rope.get("rope_type", "default") != "default":
        raise MathtuneError(f"GGUF export: rotary scaling '{rope.get('rope_type')}' is not written by this exporter; "
                            "export with --format hf")


def permute_for_llama_cpp(weights: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's `LlamaModel.permute`: within each head, rows (pair, half, i) -> (half, i, pair)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def gguf_tensors(model: Any, quant: str) -> Iterator[tuple[str, np.ndarray, Any]]:
    """(GGUF name, data, raw quantization type or None) for every weight of `model`, in order."""
    import gguf

    config = model.config
    arch_name, permute = GGUF_ARCHITECTURES[config.model_type]
    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == arch_name)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for name, tensor in model.state_dict().items():
        if name.endswith(SKIPPED_TENSORS) or (tied and name == "lm_head.weight"):
            continue
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise MathtuneError(f"GGUF export: no llama.cpp name for tensor '{name}' of a {config.model_type} model")
        data = tensor.detach().to(torch.float32).cpu()
        if permute and name.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute_for_llama_cpp(data, n_head)
        elif permute and name.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute_for_llama_cpp(data, n_kv)
        yield target, *_encode(data.numpy(), quant)


def _encode(data: np.ndarray, quant: str) -> tuple[np.ndarray, Any]:
    import gguf

    if data.ndim < 2:
        return data.astype(np.float32), None
    if quant == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        return gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return data.astype(np.float16), None


def write_gguf(model: Any, tokenizer_dir: Path, path: Path, quant: str, name: str,
               source_gguf: Path | None = None, extra: dict[str, str] | None = None) -> None:
    """Write `model` (merged, any float dtype) to `path`; the tokenizer from the files saved in
    `tokenizer_dir`, or from `source_gguf`'s metadata when the model came from a GGUF."""
    import gguf

    if quant not in QUANTS:
        raise MathtuneError(f"--quant {quant}: GGUF export writes {', '.join(QUANTS)}")
    config = model.config
    check_gguf_architecture(config)
    arch_name, _ = GGUF_ARCHITECTURES[config.model_type]
    writer = gguf.GGUFWriter(str(path), arch_name)
    writer.add_name(name)
    for key, value in (extra or {}).items():
        writer.add_string(key, value)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    _add_hyperparameters(writer, config)
    if source_gguf is not None:
        copy_tokenizer_metadata(writer, source_gguf)
    else:
        add_tokenizer_metadata(writer, tokenizer_dir, config.vocab_size)
    for target, data, raw_dtype in gguf_tensors(model, quant):
        writer.add_tensor(target, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _rope_parameters(config: Any) -> dict[str, Any]:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return dict(rope)


def _add_hyperparameters(writer: Any, config: Any) -> None:
    """What `TextModel.set_gguf_parameters` and `LlamaModel.set_gguf_parameters` write."""
    n_head = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    rope_theta = _rope_parameters(config).get("rope_theta", getattr(config, "rope_theta", 10000.0))
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or n_head)
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def copy_tokenizer_metadata(writer: Any, source: Path) -> None:
    """Every `tokenizer.*` key of the source GGUF, with its own value types."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), value_type, sub_type=sub_type)


def add_tokenizer_metadata(writer: Any, tokenizer_dir: Path, vocab_size: int) -> None:
    """llama.cpp's `get_vocab_base` + `_set_vocab_gpt2` for a byte-level BPE tokenizer saved by transformers."""
    import gguf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if _tokenizer_model(tokenizer) != "BPE":
        raise MathtuneError(f"GGUF export writes byte-level BPE tokenizers; this one is {_tokenizer_model(tokenizer)}: "
                            "export with --format hf")
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise MathtuneError(f"GGUF export: the tokenizer has ids up to {max(vocab.values())}, the model only "
                            f"{vocab_size} embedding rows")
    reverse = {index: token for token, index in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in reverse:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(reverse[index])
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[index])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tokenizer_pre(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise MathtuneError(f"GGUF export: no BPE merges found in {tokenizer_dir}")
    special.add_to_gguf(writer, quiet=True)
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))


def _tokenizer_model(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return type(tokenizer).__name__
    return json.loads(backend.to_str())["model"]["type"]


def tokenizer_pre(tokenizer: Any) -> str:
    """llama.cpp's `tokenizer.ggml.pre`: how text is split before BPE. Recognised from the tokenizer's
    own pre-tokenizer, never guessed: GPT-2's ByteLevel regex, SmolLM's single digits, or a Split
    regex transformers' GGUF loader knows by name."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    pre = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [part.get("type") for part in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"]:
        pattern = parts[0].get("pattern", {}).get("Regex")
        for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items():
            if regex == pattern:
                return name
    raise MathtuneError(f"GGUF export: pre-tokenizer {kinds} is not one llama.cpp knows by name; "
                        "export with --format hf")
