"""The model: build from HF (new tokens, LoRA/full), fetch offline checkpoints, tiny test models."""
