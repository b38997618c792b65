"""GRPO settings: reinforcement learning with verifiable rewards on a LoRA adapter (TRL's GRPOTrainer).

Defaults fit the 2-core CPU config (configs/grpo_cpu.yaml); configs/grpo_gpu.yaml shows a GPU run.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from mathtune.methods.lora.config import LoraMethodConfig


class GrpoMethodConfig(LoraMethodConfig):
    """LoRA's fields (r, alpha, bias, target_modules: a fresh adapter's shape) and GRPO's."""

    name: Literal["grpo"] = "grpo"  # type: ignore[assignment]
    init_adapter: str | None = Field(
        None, description="A finished lora run dir (or its adapter/) to continue with RL (SFT, then RL); "
        "null: a fresh LoRA adapter on the base model")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout (RL compares log-probs: 0 keeps them exact)")
    max_solution_steps: int | None = Field(
        None, ge=1, description="Train only on problems whose reference solution has at most this many "
        "calculations (GSM8K's <<expr=value>> annotations): problems the starting model sometimes solves, so a "
        "group's rewards differ and GRPO has a signal; null: every train problem")
    num_generations: int = Field(4, ge=2, description="Completions sampled per prompt (the group)")
    max_completion_length: int = Field(160, ge=8, description="New tokens per completion at most")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the completions")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling of the completions")
    beta: float = Field(0.04, ge=0, description="KL penalty to the starting policy (0: no reference model)")
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = Field("dapo", description="TRL's loss variant")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Advantage normalisation: by the group's std (GRPO), the batch's, or none (Dr. GRPO)")
    reward_correct: float = Field(
        1.0, ge=0, description="Weight of 'the final answer is right', read by the evaluation's extractor")
    correct_score: Literal["strict-match", "numeric-match"] = Field(
        "numeric-match", description="Which evaluation score the correctness reward uses")
    reward_program: float = Field(
        0.0, ge=0, description="Weight of 'the program, run in the sandbox, computes the answer' (program strategy)")
    reward_format: float = Field(
        0.0, ge=0, description="Weight of 'the output has the strategy's answer form' (#### N, or code that parses)")
    use_vllm: bool = Field(False, description="Generate with vLLM (GPU, `pip install vllm`): TRL's colocate mode")

    @model_validator(mode="after")
    def _some_reward(self) -> GrpoMethodConfig:
        if self.reward_correct + self.reward_program + self.reward_format == 0:
            raise ValueError("every GRPO reward weight is 0: set method.reward_correct, reward_program or "
                             "reward_format above 0")
        return self

    def check_against(self, run: Any) -> None:
        """The rewards must fit the prompt strategy: a program is run, a text answer is read."""
        programs = run.prompt.strategy == "program"
        if self.reward_program > 0 and not programs:
            raise ValueError("method.reward_program runs the completion as a program: it needs "
                             "prompt.strategy=program (or set method.reward_program=0)")
        if self.reward_correct > 0 and programs:
            raise ValueError("method.reward_correct reads a final answer from text, but the program strategy "
                             "writes code: set method.reward_correct=0 and method.reward_program above 0")
