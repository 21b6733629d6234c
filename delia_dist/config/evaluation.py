"""Evaluation section: downstream tasks, special-token alignment, gradient diagnostics."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from .errors import ConfigValueError


@dataclass
class EvalTaskConfig:
    name: str
    kind: Literal["translation", "format"]
    path: str = field(metadata={"path": "exists"})
    max_samples: Optional[int] = None


@dataclass
class AlignmentConfig:
    # New token -> keyword tokens its representation should approach.
    keywords: dict[str, list[str]] = field(default_factory=dict)
    layers: list[int] = field(default_factory=lambda: [0, 1, 2])


@dataclass
class EvalConfig:
    tasks: list[EvalTaskConfig] = field(default_factory=list)
    every_steps: Optional[int] = None
    max_new_tokens: int = 256
    backend: Literal["auto", "vllm", "transformers"] = "auto"
    bleurt_checkpoint: Optional[str] = field(default=None, metadata={"path": "exists"})
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    grad_cosine: bool = False

    def validate(self) -> None:
        if self.every_steps is not None and self.every_steps < 1:
            raise ConfigValueError("every_steps", "must be >= 1 or null")
