"""Model section: which model, which new tokens and how to initialise them, LoRA or full."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from .errors import ConfigValueError


@dataclass
class NewTokenConfig:
    token: str
    # random (the paper's, default): N(0, initializer_range) as transformers' resize draws it;
    # mean: mean of existing rows; description: mean embedding of `description`'s tokens.
    # mean and description are ablations: description starts from the very words the
    # alignment metric measures against, so it biases that metric from step 0.
    init: Literal["mean", "description", "random"] = "random"
    description: Optional[str] = None

    def validate(self) -> None:
        if self.init == "description" and not self.description:
            raise ConfigValueError("description", "required when init is 'description'")


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 16
    dropout: float = 0.05
    # Modules that get an adapter. The authors' layout adds embed_tokens (a low-rank adapter on
    # the embedding, PEFT's lora_embedding_A/B, through which new-token rows learn) with
    # train_embeddings: false, so lm_head stays frozen; the export merges it. A tied model's
    # head is the frozen base embedding in training and the merged embedding once exported
    # (the one shared matrix, as PEFT's merge_and_unload leaves it).
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # Train the embedding and output head in full (a tied model: the one shared matrix), the
    # other way for new special tokens to learn under LoRA.
    train_embeddings: bool = True

    def validate(self) -> None:
        if self.r < 1:
            raise ConfigValueError("r", "must be >= 1")
        if self.train_embeddings and "embed_tokens" in self.target_modules:
            raise ConfigValueError("train_embeddings", "trains embed_tokens in full, and target_modules also puts an "
                                                       "adapter on it: choose one (the paper's layout: the adapter, "
                                                       "train_embeddings: false)")
        if not 0 <= self.dropout < 1:
            raise ConfigValueError("dropout", "must be in [0, 1)")


@dataclass
class ModelConfig:
    # A hub id or a local directory for from_pretrained; or leave null and give `config`.
    name_or_path: Optional[str] = field(default=None, metadata={"path": "local_or_hub"})
    # Build from a config (tests, tiny runs): transformers config kwargs incl. model_type.
    config: Optional[dict[str, Any]] = None
    # Tokenizer directory or id; defaults to name_or_path.
    tokenizer: Optional[str] = field(default=None, metadata={"path": "local_or_hub"})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: Optional[str] = None
    trust_remote_code: bool = False
    new_tokens: list[NewTokenConfig] = field(default_factory=list)
    pad_vocab_to_multiple_of: int = 64
    finetune: Literal["full", "lora"] = "full"
    lora: LoraConfig = field(default_factory=LoraConfig)
    gradient_checkpointing: bool = False

    def validate(self) -> None:
        if (self.name_or_path is None) == (self.config is None):
            raise ConfigValueError("name_or_path", "give exactly one of model.name_or_path or model.config")
        if self.config is not None and "model_type" not in self.config:
            raise ConfigValueError("config", "needs a model_type (e.g. llama)")
        if self.name_or_path is None and self.tokenizer is None:
            raise ConfigValueError("tokenizer", "required when the model is built from a config")
        tokens = [t.token for t in self.new_tokens]
        if len(set(tokens)) != len(tokens):
            raise ConfigValueError("new_tokens", f"duplicate tokens in {tokens}")
        if self.pad_vocab_to_multiple_of < 1:
            raise ConfigValueError("pad_vocab_to_multiple_of", "must be >= 1")
