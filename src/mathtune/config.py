"""One typed, validated run configuration: YAML file + dotted CLI overrides -> RunConfig.

Every field is documented where it is declared. Unknown keys and wrong types are errors that name
the key (pydantic, `extra="forbid"`, strict scalars). The resolved config is saved in every run dir.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from mathtune.data.benchmarks import BENCHMARKS
from mathtune.data.records import read_text
from mathtune.errors import MathtuneError
from mathtune.methods.section_table import ON_NEW_METHOD, MethodConfig, method_union

# Shipped inside the package, so an installed wheel finds quickstart.yaml too (the repo's `configs/`
# is a link to this folder, for the README's `-c configs/...` commands).
DEFAULT_CONFIG_DIR = Path(__file__).resolve().with_name("configs")


def one_of(value: str, choices: tuple[str, ...]) -> str:
    """`value` if it is one of `choices` (registries that grow at run time: benchmarks, strategies),
    else pydantic's own error for a Literal, so messages read as they did with one."""
    if value not in choices:
        expected = ", ".join(repr(c) for c in choices[:-1]) + f" or {choices[-1]!r}" if len(choices) > 1 else \
            repr(choices[0])
        raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
    return value


def strategy_descriptions() -> dict[str, str]:
    """Each prompt strategy's one-line description, from prompts.yaml (the one place they are declared)."""
    from mathtune.prompts import load_strategies

    return {name: strategy.description for name, strategy in load_strategies().items()}


class Section(BaseModel):
    # strict: "8" is not silently an int; forbid: a typo'd key is an error, not a no-op.
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


class ModelConfig(Section):
    name: str = Field("smollm2-135m", description="Embedded name, hub id, local directory or .gguf file")
    architecture: Literal["auto", "causal", "seq2seq"] = Field(
        "auto", description="Model family; 'auto' reads the model's config"
    )
    gguf_file: str | None = Field(None, description="GGUF file name inside `name` (a hub repo or dir)")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto': CUDA when present, else CPU")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub (off: safer)")


class DataConfig(Section):
    dataset: str = Field(
        "gsm8k", description="Benchmark to train and test on: " + "; ".join(
            f"{b.name}: {b.description}" for b in BENCHMARKS.values()) + " (the table in data/benchmarks.py)")
    subset: Literal["main", "socratic"] = Field("main", description="GSM8K config: main or socratic")
    data_dir: str | None = Field(
        None, description="Folder holding gsm8k/ and svamp/ (env MATHTUNE_DATA_DIR); else the hub"
    )
    train_file: str | None = Field(
        None, description="JSONL/CSV train file (jsonl; math and arc-challenge: a local copy with the hub's fields)")
    test_file: str | None = Field(
        None, description="JSONL/CSV test file (jsonl; math and arc-challenge: a local copy with the hub's fields)")
    svamp_test: Literal["holdout", "all"] = Field(
        "holdout", description="SVAMP is one file: 'holdout' tests on a seeded 300 and trains on the other 700; "
        "'all' tests on all 1,000 (for a model trained on another dataset)")
    allow_test_overlap: bool = Field(
        False, description="Allow training on problems that are also test problems (refused otherwise)")
    question_field: str = Field("question", description="Field holding the question (jsonl)")
    answer_field: str = Field("answer", description="Field holding the solution ending in '#### N' (jsonl)")
    train_size: int | None = Field(None, ge=1, description="Train rows used (first N after shuffle); all if null")
    max_length: int = Field(512, ge=16, description="Max tokens of prompt + target in training")

    @field_validator("dataset")
    @classmethod
    def _known_benchmark(cls, name: str) -> str:
        return one_of(name, tuple(BENCHMARKS))


class PromptConfig(Section):
    strategy: str = Field("qa", description="Prompt strategy, one of prompts.yaml's: " + "; ".join(
        f"{name}: {description}" for name, description in strategy_descriptions().items()))
    few_shot: int = Field(0, ge=0, le=16, description="Worked examples from the train split before each question")
    chat_template: bool = Field(False, description="Wrap the prompt in the tokenizer's chat template")

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, name: str) -> str:
        from mathtune.prompts import load_strategies

        return one_of(name, tuple(load_strategies()))


class TrainConfig(Section):
    epochs: float = Field(1.0, gt=0, description="Passes over the train subset")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs)")
    batch_size: int = Field(4, ge=1, description="Examples per optimizer step (per process)")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step")
    lr: float = Field(2e-4, gt=0, description="AdamW peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps, then linear decay to 0")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm")
    loss_on: Literal["completion", "all"] = Field("completion", description="Loss on the answer only, or everything")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Mixed precision through accelerate. 'auto': bf16 on GPUs that support it, else fp16 "
        "with loss scaling; bf16 autocast on CPUs that support it, else fp32 (fp16 on CPU only when asked)"
    )
    speedups: bool = Field(
        True, description="Master switch of the CPU speedups (mathtune/speedups/): false turns off packing, "
        "varlen attention, the fused loss, fast dropout, fused ops and LoRA, the C kernels and mimalloc: "
        "plain transformers + PEFT"
    )
    packing: bool = Field(True, description="Padding-free packing with per-example attention and positions")
    varlen_attention: bool = Field(True, description="Packed rows: attention run per example (causal kernel)")
    fused_loss: bool = Field(True, description="Cross-entropy through the head chunk by chunk, gradient in forward")
    fast_dropout: bool = Field(True, description="Dropout masks from 16-bit random lanes (p rounded to 1/65536)")
    fused_ops: bool = Field(True, description="Llama-style RMSNorm and SwiGLU as single autograd nodes (less memory)")
    fused_lora: bool = Field(True, description="LoRA dropout + A as one autograd node keeping x and a mask or seed")
    dropout_mask_storage: Literal["bytes", "bits", "seed"] = Field(
        "bits", description="How fused LoRA keeps dropout masks for backward where the C kernels do not run: "
        "1 byte or 1 bit per element, or only the seed (the mask is drawn again; the kernels always do this)"
    )
    cpu_kernels: bool = Field(
        True, description="On CPU in bf16, LoRA's dropout + A, RMSNorm, SwiGLU and dropout masks in C kernels "
        "built on first use (needs a C compiler; without one, torch ops do the same)"
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory")
    allocator: Literal["mimalloc", "system"] = Field(
        "mimalloc", description="Heap allocator of `mathtune train/run` on Linux (mimalloc: faster, less RSS)"
    )
    max_micro_batch_tokens: int | None = Field(
        None, ge=0, description="Run a micro-batch of more tokens in pieces (same gradient, less memory); "
        "0: never; null: 1024 on CPU (lower peak RSS, docs/performance.md), never on GPUs"
    )
    save_every: int = Field(50, ge=1, description="Checkpoint every N optimizer steps (for --resume)")
    log_every: int = Field(5, ge=1, description="Log loss/throughput to TensorBoard every N steps")
    dev_eval_every: int = Field(0, ge=0, description="Dev-slice accuracy every N steps (0: off)")
    dev_size: int = Field(20, ge=1, description="Dev problems carved from the train split (never test)")
    seed: int = Field(42, description="Seed for shuffling, dropout and init")

    @model_validator(mode="after")
    def _speedups_off_means_every_lever_off(self) -> TrainConfig:
        if not self.speedups:  # written out in config.yaml, so the run dir says what ran
            for lever in SPEEDUP_LEVERS:
                object.__setattr__(self, lever, False)
            object.__setattr__(self, "allocator", "system")
        return self


# What `train.speedups: false` turns off (beside the allocator): every lever of mathtune/speedups/.
SPEEDUP_LEVERS = ("packing", "varlen_attention", "fused_loss", "fast_dropout", "fused_ops", "fused_lora",
                  "cpu_kernels")


class AlsoBenchmark(Section):
    """One more benchmark that `mathtune run` tests the base and the tuned model on (`eval.also`)."""

    data: dict[str, Any] = Field(
        description="The keys of the data section that differ from the run's, e.g. {dataset: svamp, svamp_test: "
        "all}: the benchmark, and where its test split comes from")
    num_problems: int | None = Field(200, ge=1, description="Problems drawn with eval.seed (null: all)")


class EvalConfig(Section):
    num_problems: int | None = Field(200, ge=1, description="Test problems drawn with `seed` (null: all)")
    seed: int = Field(1234, description="Seed for drawing the test problems")
    split: Literal["test", "train"] = Field("test", description="Split to evaluate on")
    batch_size: int = Field(16, ge=1, description="Prompts generated together")
    max_new_tokens: int = Field(256, ge=1, le=4096, description="Generation cap; hitting it counts as truncated")
    stop: list[str] | None = Field(None, description="Stop strings; null: the prompt strategy's own")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="Inference dtype ('auto' as train)")
    calculator: bool = Field(False, description="Calculator-augmented decoding of '<<expr=' annotations "
                                                "(causal models; refused for seq2seq)")
    repetition_stop: int = Field(
        0, ge=0, description="End a row once its tokens end in this many copies of one block (a greedy loop "
        "that would run to the cap; counted as truncated); 0: off. Causal models. benchmarks/repetition_stop.py "
        "measures what it saves and changes")
    repetition_min_tokens: int = Field(32, ge=2, description="Tokens the repeated copies must span at least, so "
                                       "that short legitimate repeats never stop a row")
    int8_decode: bool = Field(
        False, description="Weight-only int8 matmuls for calls of at most 4 rows (one-sequence decoding: the app, "
        "batch_size 1), ~3x bf16's per 1-row matmul on CPU; other numerics (like llama.cpp's Q8_0), so off by "
        "default; speedups/int8_decode.py")
    samples: int = Field(1, ge=1, le=64, description="k > 1: also sample k solutions and report maj@k (or "
                         "vote on them: `vote`)")
    vote: Literal["none", "majority", "verifier-weighted"] = Field(
        "none", description="Test-time compute beside greedy: k = `samples` solutions per problem, each seeded by "
        "(sample_seed, problem, index) as `mathtune sample` draws them; the answer of the most samples "
        "(majority) or of the highest summed verifier scores (verifier-weighted, `verifier`). The metrics hold "
        "greedy and voted scores side by side and an exact McNemar test between them. none: with samples > 1, "
        "the older maj@k drawn per chunk of problems (one process only)")
    verifier: str | None = Field(None, description="Verifier dir (`mathtune verifier train`) for vote "
                                 "verifier-weighted")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature for maj@k and `mathtune sample`")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling for `mathtune sample` (1: off)")
    sample_seed: int = Field(0, description="Seed of the sampled solutions (`mathtune sample`); each sample "
                             "has its own stream from (seed, problem, index)")
    perplexity: bool = Field(True, description="Perplexity of the reference solution under the model")
    perturbed: bool = Field(
        False, description="Robustness check: each drawn problem with new numbers and a recomputed answer "
        "(data/augment.py, seeded by `seed`); problems with no clean variant are left out"
    )
    text_metrics: bool = Field(False, description="ROUGE-1 and semantic similarity vs reference solutions")
    backend: Literal["hf", "llama-cpp"] = Field(
        "hf", description="Generation engine: 'hf' (PyTorch and mathtune's decoding loop) or 'llama-cpp' "
        "(llama-cpp-python on the GGUF file `gguf`, CPU; same decoding rules; no perplexity)")
    gguf: str | None = Field(
        None, description="GGUF file for backend llama-cpp (null: the embedded model's own file, base model "
        "only; a tuned run: `mathtune export RUN --format gguf`)")
    also: list[AlsoBenchmark] = Field(
        [], description="More benchmarks `mathtune run` evaluates base and tuned on, with these same decoding "
        "settings: into eval/<benchmark>/{base,tuned}/ and comparison_<benchmark>.md, each its own McNemar "
        "test (e.g. a benchmark the run never trains on, where a gain is not format alone)")

    @property
    def loop_stop(self) -> tuple[int, int] | None:
        """(repeats, min_tokens) for the decoding loop's repetition stop, or None when it is off."""
        return (self.repetition_stop, self.repetition_min_tokens) if self.repetition_stop else None

    @model_validator(mode="after")
    def _repetition_stop_needs_two_copies(self) -> EvalConfig:
        if self.repetition_stop == 1:
            raise ValueError("eval.repetition_stop counts copies of a repeated block: 0 (off) or 2 and more; "
                             "one copy is any text")
        return self

    @model_validator(mode="after")
    def _llama_cpp_scores_no_perplexity(self) -> EvalConfig:
        if self.backend == "llama-cpp" and self.perplexity:
            raise ValueError("eval.backend llama-cpp scores no perplexity: add -s eval.perplexity=false")
        if self.backend == "llama-cpp" and self.int8_decode:
            raise ValueError("eval.int8_decode is a lever of the hf backend; llama.cpp uses the GGUF file's own "
                             "quantization: set eval.int8_decode=false")
        return self

    @model_validator(mode="after")
    def _a_vote_needs_samples(self) -> EvalConfig:
        if self.vote != "none" and self.samples < 2:
            raise ValueError(f"eval.vote={self.vote} votes on sampled solutions: set eval.samples to 2 or more")
        if self.vote == "verifier-weighted" and not self.verifier:
            raise ValueError("eval.vote=verifier-weighted needs eval.verifier (a `mathtune verifier train` dir)")
        return self


class VerifierConfig(Section):
    """`mathtune verifier train`: a scalar-head verifier (outcome reward model) on the base model, trained
    on sampled solutions labelled right/wrong by the evaluation's extractor (the GSM8K paper's recipe)."""

    score: Literal["numeric-match", "strict-match", "flexible-extract", "math-verify"] = Field(
        "numeric-match", description="The evaluation score that labels a sample right or wrong")
    r: int = Field(16, ge=1, description="LoRA rank of the verifier's backbone")
    alpha: int = Field(32, ge=1, description="LoRA alpha")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate (the LoRA weights and the scalar head)")
    epochs: float = Field(1.0, gt=0, description="Passes over the labelled train samples")
    batch_size: int = Field(8, ge=1, description="Samples per optimizer step")
    max_length: int = Field(512, ge=16, description="Tokens of prompt + solution; longer ones lose their start")
    dev_fraction: float = Field(0.1, ge=0, lt=1, description="Share of problems (all their samples) held out as dev")
    balance: bool = Field(True, description="Weight the right class by wrong/right in the loss (BCE pos_weight)")
    wrong_per_right: float | None = Field(
        None, gt=0, description="Keep at most this many wrong samples per right one (seeded draw): a weak "
        "model's samples are mostly wrong, and training on all of them costs time for little signal")
    seed: int = Field(0, description="Seed of the dev split, the balancing and training")
    solutions_per_pass: int = Field(
        16, ge=1, description="Solutions of one problem scored per forward pass, on one run of their prompt: "
        "more rows, fewer runs of the prompt and larger matmuls, a little more padding")


class ImproveConfig(Section):
    """`mathtune improve RUN_DIR`: self-training (rejection-sampling fine-tuning / expert iteration). Each
    round samples the current model on train problems, keeps the distinct solutions the answer check
    confirms (data/self_training.py), mixes them with the human ones and trains the next model."""

    rounds: int = Field(1, ge=1, le=10, description="Rounds of sample -> filter -> train; each starts from the "
                        "model the round before trained (round 1: the run's own tuned model)")
    samples_per_problem: int = Field(4, ge=1, le=64, description="Solutions sampled per train problem (k)")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature of those solutions")
    problems: int | None = Field(None, ge=1, description="Train problems sampled per round (seeded draw of the "
                                 "train split with `seed`; null: all of them)")
    max_per_problem: int | None = Field(4, ge=1, description="Distinct right solutions kept per problem (null: "
                                        "all), so easy problems do not crowd out the rest")
    score: Literal["numeric-match", "strict-match", "flexible-extract"] = Field(
        "numeric-match", description="The evaluation score a sample must pass to be kept (programs: always the "
        "sandbox's result, which also has to be confirmed)")
    mix: list[Literal["human", "self", "augmented"]] = Field(
        ["human", "self"], min_length=1, description="Sources of each round's train data: human: the run's "
        "own train rows; self: the kept samples; augmented: `augmented_file`")
    augmented_file: str | None = Field(None, description="A `mathtune augment` JSONL, for mix 'augmented'")
    start_from: Literal["base", "continue"] = Field(
        "base", description="base: each round trains the run's method afresh from the base model on the mixed "
        "data (STaR's choice: no drift from training on one's own output twice); continue: from the model the "
        "round sampled (the run's tuned model in round 1; full fine-tuning runs only)")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps of each round's training (null: the "
                                  "run's own train.max_steps / epochs)")
    seed: int = Field(0, description="Seed of the train-problem draw and the samples (round r samples with "
                      "sample seed `seed + r`)")

    @model_validator(mode="after")
    def _augmented_needs_a_file(self) -> ImproveConfig:
        if "augmented" in self.mix and not self.augmented_file:
            raise ValueError("improve.mix 'augmented' needs improve.augmented_file (`mathtune augment -o FILE`)")
        return self


class RunConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    method: Annotated[MethodConfig, Field(discriminator="name")] = Field(
        default_factory=lambda: MethodConfig.__args__[0]()  # type: ignore[attr-defined]
    )
    train: TrainConfig = Field(default_factory=TrainConfig)
    verifier: VerifierConfig = Field(default_factory=VerifierConfig)
    improve: ImproveConfig = Field(default_factory=ImproveConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output_dir: str = Field("runs/quickstart", description="Run directory (adapter, predictions, run card)")

    @model_validator(mode="before")
    @classmethod
    def _default_method_name(cls, tree: Any) -> Any:
        if isinstance(tree, dict) and isinstance(tree.get("method"), dict):
            tree["method"].setdefault("name", "lora")
        return tree

    @model_validator(mode="after")
    def _cross_field_checks(self) -> RunConfig:
        if self.data.dataset == "jsonl" and not (self.data.train_file or self.data.test_file):
            raise ValueError("data.dataset=jsonl needs data.train_file and/or data.test_file")
        if self.prompt.strategy == "breakdown" and self.data.dataset == "gsm8k" and self.data.subset != "socratic":
            raise ValueError("prompt.strategy=breakdown needs data.subset=socratic (its sub-questions)")
        self.method.check_against(self)  # each method's own checks (methods/<name>/config.py)
        self.also_configs()  # each eval.also entry's data keys make a valid data section
        return self

    def also_configs(self) -> list[RunConfig]:
        """This config for each `eval.also` benchmark: its data keys and problem count; model, prompt,
        method and decoding as the run's own."""
        configs = []
        for index, entry in enumerate(self.eval.also):
            try:
                data = DataConfig.model_validate({**self.data.model_dump(), **entry.data})
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                raise ValueError(f"eval.also[{index}].data{'.' + where if where else ''}: {first['msg']}") from None
            evaluation = self.eval.model_copy(update={"num_problems": entry.num_problems, "also": []})
            configs.append(self.model_copy(update={"data": data, "eval": evaluation}))
        return configs

    def eval_precision(self) -> str:
        """The precision models are evaluated in: eval.dtype, or the training precision ('auto')."""
        return self.eval.dtype if self.eval.dtype != "auto" else self.train.precision

    def resolved_data_dir(self) -> Path | None:
        raw = self.data.data_dir or os.environ.get("MATHTUNE_DATA_DIR")
        return Path(raw).expanduser() if raw else None


def rebuild_method_union() -> None:
    """After `register_method` added to METHOD_CONFIGS: `method.name` accepts the new method too."""
    RunConfig.model_fields["method"].annotation = method_union()
    RunConfig.model_rebuild(force=True)


ON_NEW_METHOD.append(rebuild_method_union)


def _format_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = list(first["loc"])
    if loc[:1] == ["method"] and len(loc) > 2:
        del loc[1]  # pydantic puts the union tag ('lora') in the path; users never wrote it
    key = ".".join(str(part) for part in loc)
    if first["type"] == "union_tag_invalid":
        ctx = first.get("ctx", {})
        return f"unknown {key} '{ctx.get('tag')}' (choose from {ctx.get('expected_tags')})"
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{key}'"
    got = first.get("input")
    shown = repr(got) if not isinstance(got, dict) else "a mapping"
    return f"config key '{key or '<root>'}': {first['msg']} (got {shown})"


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise MathtuneError(f"config key '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`train.lr=1e-4` -> ("train.lr", 0.0001): the value is read as YAML, so types are real."""
    if "=" not in text:
        raise MathtuneError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return key.strip(), raw
    if isinstance(value, str):  # YAML 1.1 reads "1e-4" as text; users mean a number
        try:
            value = float(value) if any(c in value for c in ".eE") and value.strip() else value
        except ValueError:
            pass
    return key.strip(), value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MathtuneError(f"config file not found: {path}")
    try:
        # UTF-8 with or without a BOM, or UTF-16 with one (PowerShell `>`); no Windows-1252 guess, as
        # a garbled path or prompt in a config would go unnoticed. CRLF and lone CR are YAML line ends.
        text = read_text(path, legacy=False)
    except MathtuneError as exc:
        raise MathtuneError(f"YAML config file {exc}") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)  # parse errors carry one; its line counts from 0
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise MathtuneError(f"config file {where} is not valid YAML: {problem}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise MathtuneError(f"config file {path} must hold a mapping at the top level")
    return tree


def build_config(tree: dict[str, Any], overrides: dict[str, Any] | None = None) -> RunConfig:
    """Validate a config tree with dotted overrides applied on top."""
    tree = yaml.safe_load(yaml.safe_dump(tree))  # deep copy with plain types
    for key, value in (overrides or {}).items():
        _set_dotted(tree, key, value)  # None too: `-s data.train_size=null` means "all rows"
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise MathtuneError(_format_error(exc)) from None


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    return build_config(read_yaml(path) if path else {}, overrides)


def config_to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
