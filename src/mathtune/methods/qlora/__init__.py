"""QLoRA: LoRA adapters on a bitsandbytes-quantized (4-bit NF4 or 8-bit) frozen base."""
