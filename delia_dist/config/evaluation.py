"""Evaluation section: downstream tasks, special-token alignment, gradient diagnostics."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from .errors import ConfigValueError


@dataclass
class EvalTaskConfig:
    name: str
    kind: Literal["translation", "format"]
    path: str = field(metadata={"path": "exists"})
    max_samples: Optional[int] = None
    # Split of an HF dataset dir (default: "test", or the only split there is).
    split: Optional[str] = None
    # Generation length for this task (default eval.max_new_tokens); longest_reference: the
    # longest reference's token count x 1.25 + 8, so a long document is never cut (WMT-21
    # document-level references run past 512 tokens).
    max_new_tokens: Union[int, Literal["longest_reference"], None] = None

    def validate(self) -> None:
        if isinstance(self.max_new_tokens, int) and self.max_new_tokens < 1:
            raise ConfigValueError("max_new_tokens", "must be >= 1, 'longest_reference' or null")


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
    # The buffering diagnostic after training: cosine between the gradients of one diverse
    # and one downstream micro-batch (from the training sources), and between the downstream
    # gradient alone and with the diverse batch mixed in. Logged as grad_cos/*.
    grad_cosine: bool = False
    grad_batch_size: int = 4

    def validate(self) -> None:
        if self.every_steps is not None and self.every_steps < 1:
            raise ConfigValueError("every_steps", "must be >= 1 or null")
        if self.max_new_tokens < 1:
            raise ConfigValueError("max_new_tokens", "must be >= 1")
        if self.grad_batch_size < 1:
            raise ConfigValueError("grad_batch_size", "must be >= 1")
        for token, words in self.alignment.keywords.items():
            if not words:
                raise ConfigValueError("alignment.keywords", f"{token!r} has no keywords")
        if any(l < 0 for l in self.alignment.layers):
            raise ConfigValueError("alignment.layers", f"layers must be >= 0, got {self.alignment.layers}")
