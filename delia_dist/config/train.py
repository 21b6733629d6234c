"""Optimisation section: schedule, batch geometry, precision."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional

from .errors import ConfigValueError


@dataclass
class TrainConfig:
    lr: float = 2e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 25
    schedule: Literal["cosine", "constant", "linear"] = "constant"
    max_steps: Optional[int] = None
    micro_batch_size: int = 1
    grad_accum: int = 1
    grad_clip: float = 1.0
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    seed: int = 0
    # Time each step's phases (data wait, forward, loss, backward, optimizer, collectives,
    # logging) and count the threads started; rank 0 writes <run_dir>/profile.json at the end.
    profile: bool = False

    REMOVED: ClassVar[dict[str, str]] = {
        "log_every": "it was never read; metrics are logged every tracking.log_every steps"}

    def validate(self) -> None:
        if self.lr < 0:
            raise ConfigValueError("lr", f"must be >= 0, got {self.lr}")
        if self.micro_batch_size < 1 or self.grad_accum < 1:
            raise ConfigValueError("micro_batch_size", "micro_batch_size and grad_accum must be >= 1")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigValueError("betas", f"must be two numbers in [0, 1), got {self.betas}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigValueError("max_steps", "must be >= 1")
        if self.warmup_steps < 0:
            raise ConfigValueError("warmup_steps", "must be >= 0")


@dataclass
class LossConfig:
    # fused: Triton on GPU (chunked elsewhere); chunked: pure PyTorch; naive: full logits.
    impl: Literal["fused", "chunked", "naive"] = "fused"
    chunk_size: Optional[int] = None
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: Optional[float] = None
    # dtype the head's gradient is summed in over row chunks: fp32 (one V x D fp32 buffer)
    # or input (the weight's dtype: V x D x 4 bytes less, one rounding per chunk).
    head_grad_dtype: Literal["fp32", "input"] = "fp32"

    # train.grad_accum counts micro-batches per step; this one never did.
    RENAMED: ClassVar[dict[str, str]] = {"grad_accum": "head_grad_dtype"}

    def validate(self) -> None:
        if not 0 <= self.label_smoothing < 1:
            raise ConfigValueError("label_smoothing", "must be in [0, 1)")
