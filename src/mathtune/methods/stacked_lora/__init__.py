"""Stacked LoRA: a frozen stage-1 LoRA plus a stage-2 LoRA passed through an activation f."""
