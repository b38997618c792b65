"""T5's vocabulary has no newline, `{`, `}` or `<`: mathtune adds them, and texts round-trip.

The tokenizer here is a real `T5Tokenizer` (Unigram model, T5's WhitespaceSplit + Metaspace pipeline)
over a SentencePiece-style vocabulary trained in the test on text stripped of those characters, as
T5's was. The tiny models of conftest.py use a byte-level BPE, which writes every text back and
hid the problem.
"""

from __future__ import annotations

import json
import random
import string
from contextlib import contextmanager

import pytest
import torch
from helpers import synthetic_problem, tiny_config, train_tokenizer

from mathtune.config import build_config
from mathtune.data.problems import Problem
from mathtune.data.programs import solution_to_program
from mathtune.evaluate.generation import GenerationRequest
from mathtune.models.vocab import (
    ADDED_VOCAB_FILE,
    PYTHON,
    add_missing_characters,
    missing_characters,
    probe_text,
    recorded_vocab,
    round_trip,
    run_characters,
)
from mathtune.prompts import PromptStrategy, get_strategy, load_strategies, register_strategy

T5_LACKS = "\n{}<"  # what the issue names; the tab and runs of spaces go with the whitespace handling


def t5_style_tokenizer(texts: list[str], extra_ids: int = 0):
    """A T5Tokenizer whose SentencePiece-style vocabulary never saw T5_LACKS (built from a vocab list:
    how transformers 5 rebuilds a T5 tokenizer from its tokenizer.json, no `sentencepiece` needed)."""
    from tokenizers import SentencePieceUnigramTokenizer
    from transformers import T5Tokenizer

    table = str.maketrans({ch: " " for ch in T5_LACKS + "\t"})
    alphabet = [ch for ch in string.printable if ch not in T5_LACKS and not ch.isspace()]
    unigram = SentencePieceUnigramTokenizer()
    unigram.train_from_iterator([text.translate(table) for text in texts], vocab_size=400, show_progress=False,
                                special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                initial_alphabet=alphabet)
    vocab = [tuple(piece) for piece in json.loads(unigram.to_str())["model"]["vocab"]]
    assert [piece for piece, _ in vocab[:3]] == ["<pad>", "</s>", "<unk>"]  # T5's ids 0, 1, 2
    return T5Tokenizer(vocab=vocab, extra_ids=extra_ids)


def problem(seed: int) -> Problem:
    row = synthetic_problem(random.Random(seed))
    return Problem(id=f"p{seed}", question=row["question"], solution=row["answer"],
                   answer=row["answer"].rpartition("####")[2].strip())


def strategy_texts(seed: int = 1) -> dict[str, str]:
    """Each strategy's prompt + target for one problem: what training tokenizes."""
    p = problem(seed)
    program = solution_to_program(p.solution)
    texts = {}
    for name, strategy in load_strategies().items():
        texts[name] = strategy.format_prompt(p.question) + strategy.format_target(p, program)
    return texts


@pytest.fixture(scope="module")
def corpus_texts() -> list[str]:
    rng = random.Random(0)
    rows = [synthetic_problem(rng) for _ in range(120)]
    programs = [solution_to_program(row["answer"]) or "" for row in rows]
    strategies = [s.prompt + s.target + "".join(s.stop) for s in load_strategies().values()]
    return [row["question"] for row in rows] + [row["answer"] for row in rows] + programs + strategies + [probe_text()]


@pytest.fixture()
def t5_tokenizer(corpus_texts):
    return t5_style_tokenizer(corpus_texts)


def test_t5_vocabulary_loses_annotations_newlines_and_programs(t5_tokenizer):
    """The problem: without the fix, annotated solutions and program targets do not come back."""
    p = problem(1)
    program = solution_to_program(p.solution)
    assert program is not None and "\n" in program and "<<" in p.solution
    assert set(T5_LACKS) <= set(missing_characters(t5_tokenizer))
    solution = round_trip(t5_tokenizer, p.solution)
    assert "<<" not in solution and "\n" not in solution and solution != p.solution
    assert round_trip(t5_tokenizer, program) != program
    assert round_trip(t5_tokenizer, "if x:\n    y = {1: 2}\n") == "if x: y = 1: 2"  # no line, no indent, no {}


def test_added_characters_make_every_strategy_round_trip(t5_tokenizer):
    before = len(t5_tokenizer)
    added = add_missing_characters(t5_tokenizer)
    assert set(T5_LACKS) <= set(added) and len(t5_tokenizer) == before + len(added)
    assert t5_tokenizer.convert_ids_to_tokens(list(range(before, len(t5_tokenizer)))) == added
    texts = {**strategy_texts(), "probe": probe_text(),
             "indented": "def f(x):\n    if x:\n        return {x}\n\tpass\n",
             "annotation": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"}
    for name, text in texts.items():
        assert round_trip(t5_tokenizer, text) == text, name
        ids = t5_tokenizer(text).input_ids
        assert t5_tokenizer.unk_token_id not in ids, name
    # Leading whitespace at the very start is the one thing the Metaspace decoder still drops.
    assert round_trip(t5_tokenizer, " #### 72") == "#### 72"
    assert add_missing_characters(t5_tokenizer) == [] and len(t5_tokenizer) == before + len(added)  # idempotent


def test_round_trip_survives_a_t5_like_normalizer_and_a_save_reload(t5_tokenizer, tmp_path):
    """Real T5 tokenizers normalize (nmt_nfkc maps newline and tab to a space): added tokens are cut out
    before it. A saved T5 tokenizer reloads with T5's own pipeline; applying the fix again restores
    the round trip with the same ids and adds nothing."""
    from tokenizers import normalizers
    from transformers import AutoTokenizer

    t5_tokenizer.backend_tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Replace("\n", " "), normalizers.Replace("\t", " "), normalizers.NFKC()])
    added = add_missing_characters(t5_tokenizer)
    text = strategy_texts()["program"]
    assert round_trip(t5_tokenizer, text) == text
    t5_tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.convert_tokens_to_ids(added) == t5_tokenizer.convert_tokens_to_ids(added)
    assert add_missing_characters(reloaded) == []
    assert round_trip(reloaded, text) == text and len(reloaded) == len(t5_tokenizer)


def test_byte_level_tokenizers_are_left_alone(corpus_texts):
    tokenizer = train_tokenizer(corpus_texts)
    before = len(tokenizer)
    assert missing_characters(tokenizer) == [] and add_missing_characters(tokenizer) == []
    assert len(tokenizer) == before


@pytest.fixture(scope="module")
def t5_sp_model(tmp_path_factory, corpus_texts):
    """A tiny random T5 whose embedding has exactly the SentencePiece vocabulary's rows, saved with it."""
    from transformers import AutoModelForSeq2SeqLM

    tokenizer = t5_style_tokenizer(corpus_texts)
    out = tmp_path_factory.mktemp("t5sp")
    torch.manual_seed(0)
    AutoModelForSeq2SeqLM.from_config(tiny_config("t5", len(tokenizer), tokenizer.pad_token_id,
                                                  tokenizer.eos_token_id)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, len(tokenizer)


METHODS = {
    "lora": {"name": "lora", "r": 4, "dropout": 0.0},
    "stacked-lora": {"name": "stacked-lora", "r": 4, "dropout": 0.0},
    "full": {"name": "full"},
    "qlora": {"name": "qlora", "r": 4, "dropout": 0.0, "bits": 8},
}


@pytest.mark.parametrize("method", list(METHODS))
def test_t5_trains_saves_and_reloads_the_added_rows(method, t5_sp_model, data_dir, tmp_path):
    """Program targets train on a T5 vocabulary, the new rows are trained and saved, and evaluation
    rebuilds the model with the same vocabulary and those rows."""
    from safetensors.torch import load_file

    from mathtune.evaluate.backend import build_backend
    from mathtune.recipes.train import train

    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    model_dir, vocab = t5_sp_model
    cfg = build_config({
        "model": {"name": str(model_dir)},
        "data": {"data_dir": str(data_dir), "train_size": 4, "max_length": 160},
        "prompt": {"strategy": "program"}, "method": METHODS[method],
        "train": {"max_steps": 2, "batch_size": 2, "precision": "fp32", "lr": 5e-2},
        "eval": {"batch_size": 2, "max_new_tokens": 8, "dtype": "fp32"}, "output_dir": str(tmp_path / "run"),
    })
    result = train(cfg, tmp_path / "run", show_progress=False)
    added = result.card["data"]["added_characters"]
    assert set(T5_LACKS) <= set(added)

    tuned, meta = build_backend(cfg, result.adapter_dir)
    base, _ = build_backend(cfg)
    ids = tuned.tokenizer.convert_tokens_to_ids(added)
    assert ids == list(range(vocab, vocab + len(added)))  # appended after the vocabulary, as in training
    assert meta["added_characters"] == added
    for backend in (tuned, base):
        assert backend.model.get_input_embeddings().weight.shape[0] == len(backend.tokenizer) == vocab + len(added)
    # The tuned rows of the added characters are the trained ones, not the base's fresh mean rows.
    probe = torch.tensor([ids])
    with torch.no_grad():
        tuned_rows, base_rows = tuned.model.get_input_embeddings()(probe), base.model.get_input_embeddings()(probe)
    assert not torch.allclose(tuned_rows, base_rows)
    assert torch.allclose(base_rows[0, 0], base_rows[0, -1])  # every new row starts as the same mean

    program = get_strategy("program")
    target = program.format_target(problem(1), solution_to_program(problem(1).solution))
    encoded = tuned.tokenizer(text_target=target).input_ids
    assert tuned.tokenizer.unk_token_id not in encoded and set(ids) & set(encoded)
    prompt = program.format_prompt(problem(2).question)
    out = tuned.generate([GenerationRequest(prompt, program.stop, 8)])
    assert len(out) == 1 and isinstance(out[0].text, str) and out[0].new_tokens <= 8
    if method == "full":
        return  # the whole resized model was saved and reloaded
    # The adapter holds the added rows alone (not the whole resized embedding matrix), and they are the
    # rows the reloaded model uses for those ids.
    [weights] = result.adapter_dir.glob("*.safetensors")
    state = load_file(weights)
    [rows] = [value for key, value in state.items() if key.endswith(("trainable_tokens_delta", "token_rows"))]
    assert not any(key.endswith(("shared.weight", "embed_tokens.weight", "lm_head.weight")) for key in state)
    assert torch.allclose(rows, tuned_rows[0])
    if method in ("lora", "qlora"):
        assert json.loads((result.adapter_dir / "adapter_config.json").read_text())["trainable_token_indices"] == ids


@pytest.mark.parametrize("stage1", ["lora", "stacked-lora"])
def test_stacked_stage2_starts_from_the_rows_stage1_trained(stage1, t5_sp_model, data_dir, tmp_path):
    """Stage 2 reads stage 1's added-token rows (from a PEFT lora adapter or a stacked one) and keeps
    training them; its saved unit carries them."""
    from safetensors.torch import load_file

    from mathtune.methods.registry import build_method
    from mathtune.models.device import choose_placement
    from mathtune.models.setup import load_for_run
    from mathtune.recipes.train import train

    def cfg(method: dict, out: str):
        return build_config({
            "model": {"name": str(t5_sp_model[0])},
            "data": {"data_dir": str(data_dir), "train_size": 4, "max_length": 160},
            "prompt": {"strategy": "program"}, "method": method,
            "train": {"max_steps": 1, "batch_size": 2, "precision": "fp32", "lr": 5e-2},
            "eval": {"dtype": "fp32"}, "output_dir": str(tmp_path / out),
        })

    first = train(cfg(METHODS[stage1], "s1"), tmp_path / "s1", show_progress=False)
    [trained] = [v for k, v in load_file(next(first.adapter_dir.glob("*.safetensors"))).items()
                 if k.endswith(("trainable_tokens_delta", "token_rows"))]
    cfg2 = cfg({**METHODS["stacked-lora"], "stage1_adapter": str(tmp_path / "s1")}, "s2")
    loaded = load_for_run(cfg2.model, choose_placement("cpu", "fp32"))
    model = build_method(cfg2.method).apply(loaded.model)
    [rows] = {id(m.rows): m.rows for m in model.modules() if hasattr(m, "rows")}.values()
    assert rows.requires_grad and torch.equal(rows.detach(), trained)
    second = train(cfg2, tmp_path / "s2", show_progress=False)
    state = load_file(next(second.adapter_dir.glob("*.safetensors")))
    assert not torch.equal(state["shared.token_rows"], trained)  # trained on in stage 2


# A strategy that arrives after a run trained: Windows line ends and a section sign, two characters
# T5 lacks. '\r' sorts between '\n' and '!', so today's probe gives every added character after it
# another id than the run's.
LATE_CHARACTERS = "\r§"


@contextmanager
def late_strategy():
    """Register the strategy for the block only (load_strategies() is shared by every test)."""
    register_strategy(PromptStrategy(name="toy-crlf", description="'§ ..\\r\\nA:'", prompt="§ {question}\r\nA:",
                                     target=" {solution}", shot_separator="\r\n\r\n", stop=("\r\n§",)))
    try:
        yield "toy-crlf"
    finally:
        del load_strategies()["toy-crlf"]


def test_a_strategy_registered_after_training_keeps_the_runs_added_ids(t5_sp_model, data_dir, tmp_path):
    """The run records the characters it added with their ids (added_vocab.json, the train card);
    evaluating it, exporting it or training on from it gives the tokenizer exactly those, whatever
    strategies exist now. The base model takes today's probe. A run saved before the record falls back
    to its saved tokenizer's added vocabulary."""
    from mathtune.evaluate.backend import build_backend
    from mathtune.methods.registry import build_method
    from mathtune.models.device import choose_placement
    from mathtune.models.setup import load_for_run
    from mathtune.recipes.export import load_tuned
    from mathtune.recipes.train import train

    model_dir, vocab = t5_sp_model
    cfg = build_config({
        "model": {"name": str(model_dir)},
        "data": {"data_dir": str(data_dir), "train_size": 4, "max_length": 160},
        "prompt": {"strategy": "program"}, "method": METHODS["lora"],
        "train": {"max_steps": 1, "batch_size": 2, "precision": "fp32", "lr": 5e-2},
        "eval": {"batch_size": 2, "max_new_tokens": 8, "dtype": "fp32"}, "output_dir": str(tmp_path / "run"),
    })
    result = train(cfg, tmp_path / "run", show_progress=False)
    added, ids = result.card["data"]["added_characters"], result.card["data"]["added_token_ids"]
    assert set(T5_LACKS) <= set(added) and not set(LATE_CHARACTERS) & set(added)
    assert ids == list(range(vocab, vocab + len(added)))
    record = json.loads((result.adapter_dir / ADDED_VOCAB_FILE).read_text(encoding="utf-8"))
    assert record == {"characters": added, "ids": ids}

    def tuned_ids(backend) -> list[int]:
        assert not set(LATE_CHARACTERS) & set(backend.tokenizer.get_added_vocab())
        assert backend.model.get_input_embeddings().weight.shape[0] == vocab + len(added)
        return backend.tokenizer.convert_tokens_to_ids(added)

    with late_strategy():
        base, base_meta = build_backend(cfg)  # the base model: today's strategies, the new characters too
        assert set(LATE_CHARACTERS) <= set(base_meta["added_characters"])
        assert base.tokenizer.convert_tokens_to_ids(added) != ids  # what refused the run before the record

        tuned, meta = build_backend(cfg, result.adapter_dir)
        assert meta["added_characters"] == added and tuned_ids(tuned) == ids
        model, tokenizer, exported = load_tuned(cfg, result.adapter_dir)  # export (and merge)
        assert exported == added and tokenizer.convert_tokens_to_ids(added) == ids
        stage2 = build_config({**cfg.model_dump(mode="json"), "method": {
            **METHODS["stacked-lora"], "stage1_adapter": str(tmp_path / "run")}})
        loaded = load_for_run(stage2.model, choose_placement("cpu", "fp32"),
                              tuned_dir=build_method(stage2.method).starts_from())
        assert loaded.added_characters == added and loaded.tokenizer.convert_tokens_to_ids(added) == ids

        (result.adapter_dir / ADDED_VOCAB_FILE).unlink()  # a run trained before the record
        assert run_characters(result.adapter_dir) == added
        tuned, meta = build_backend(cfg, result.adapter_dir)
        assert meta["added_characters"] == added and tuned_ids(tuned) == ids


def test_the_saved_tokenizer_fallback_skips_t5s_own_added_tokens(corpus_texts, tmp_path):
    """T5's sentinel tokens (<extra_id_N>) are added tokens too, but special: not mathtune's."""
    tokenizer = t5_style_tokenizer(corpus_texts, extra_ids=3)
    assert "<extra_id_0>" in tokenizer.get_added_vocab()
    added = add_missing_characters(tokenizer)
    tokenizer.save_pretrained(tmp_path / "old-run")
    assert recorded_vocab(tmp_path / "old-run") == dict(zip(added, tokenizer.convert_tokens_to_ids(added), strict=True))
    assert run_characters(tmp_path / "nothing-saved") is None and run_characters(None) is None


def test_a_registered_strategy_joins_the_probe(corpus_texts):
    before = probe_text()
    with late_strategy():
        assert set(LATE_CHARACTERS) <= set(missing_characters(t5_style_tokenizer(corpus_texts)))
        assert set(LATE_CHARACTERS) <= set(probe_text()) and probe_text().startswith(before[:-len(PYTHON)])
    assert probe_text() == before
