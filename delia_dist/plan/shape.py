"""The model's shape (layers, widths, vocabulary) from its config, without downloading it."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

_LLAMA3 = {"vocab_size": 128256, "max_position_embeddings": 8192, "tie_word_embeddings": False}
# Shapes of hub models the planner knows without downloading their config.json.
KNOWN_ARCHITECTURES = {
    "meta-llama/meta-llama-3-8b": {**_LLAMA3, "hidden_size": 4096, "num_hidden_layers": 32,
                                   "num_attention_heads": 32, "num_key_value_heads": 8,
                                   "intermediate_size": 14336},
    "meta-llama/meta-llama-3-70b": {**_LLAMA3, "hidden_size": 8192, "num_hidden_layers": 80,
                                    "num_attention_heads": 64, "num_key_value_heads": 8,
                                    "intermediate_size": 28672},
}
_ALIASES = {"meta-llama/llama-3.1-8b": "meta-llama/meta-llama-3-8b",
            "meta-llama/llama-3.1-70b": "meta-llama/meta-llama-3-70b",
            "meta-llama/meta-llama-3.1-8b": "meta-llama/meta-llama-3-8b",
            "meta-llama/meta-llama-3.1-70b": "meta-llama/meta-llama-3-70b"}


class PlanError(ValueError):
    """The planner cannot work out the model's shape from the config."""


@dataclass
class Architecture:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    head_dim: int
    tied: bool
    source: str

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def layer_params(self) -> int:
        h, q = self.hidden, self.heads * self.head_dim
        attn = h * q + 2 * h * self.kv_dim + q * h
        return attn + 3 * h * self.intermediate + 2 * h

    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    def total_params(self) -> int:
        head = 0 if self.tied else self.vocab * self.hidden
        return self.embedding_params() + self.layers * self.layer_params() + self.hidden + head

    def matmul_params(self) -> int:
        """Parameters that multiply activations (the input embedding is a lookup)."""
        return self.layers * self.layer_params() + self.vocab * self.hidden


def architecture(model_cfg, vocab: Optional[int] = None) -> Architecture:
    """The model's shape: the inline config, a local config.json, or the known-hub table."""
    if model_cfg.config is not None:
        raw, source = dict(model_cfg.config), "model.config"
    else:
        name = model_cfg.name_or_path
        local = Path(name) / "config.json"
        if local.is_file():
            raw, source = json.loads(local.read_text()), str(local)
        else:
            key = name.lower().rstrip("/").removesuffix("-instruct")
            key = _ALIASES.get(key, key)
            if key not in KNOWN_ARCHITECTURES:  # a local directory not downloaded yet, named as on the hub
                base = key.rsplit("/", 1)[-1]
                key = next((k for k in [*KNOWN_ARCHITECTURES, *_ALIASES] if k.rsplit("/", 1)[-1] == base), key)
                key = _ALIASES.get(key, key)
            if key not in KNOWN_ARCHITECTURES:
                raise PlanError(f"model {name!r}: no local config.json and not a known architecture "
                                f"({', '.join(sorted(KNOWN_ARCHITECTURES))}); point model.name_or_path at "
                                f"a local directory with its config.json")
            raw, source = KNOWN_ARCHITECTURES[key], f"known architecture {key}"
    vocab = vocab or raw.get("vocab_size") or _tokenizer_vocab(model_cfg.tokenizer)
    if not vocab:
        raise PlanError(f"{source} has no vocab_size and the tokenizer is not a local directory; pass --vocab")
    try:
        hidden, heads = int(raw["hidden_size"]), int(raw["num_attention_heads"])
        return Architecture(hidden=hidden, layers=int(raw["num_hidden_layers"]), heads=heads,
                            kv_heads=int(raw.get("num_key_value_heads") or heads),
                            intermediate=int(raw["intermediate_size"]), vocab=int(vocab),
                            head_dim=int(raw.get("head_dim") or hidden // heads),
                            tied=bool(raw.get("tie_word_embeddings", False)), source=source)
    except KeyError as e:
        raise PlanError(f"{source}: missing {e.args[0]}") from None


def _tokenizer_vocab(tokenizer: Optional[str]) -> Optional[int]:
    path = Path(tokenizer) / "tokenizer.json" if tokenizer else None
    if path is None or not path.is_file():
        return None
    data = json.loads(path.read_text())
    ids = list(data.get("model", {}).get("vocab", {}).values()) + [t["id"] for t in data.get("added_tokens", [])]
    return max(ids) + 1 if ids else None


def lora_trainable(arch: Architecture, lora) -> int:
    dims = {"q_proj": (arch.hidden, arch.heads * arch.head_dim), "k_proj": (arch.hidden, arch.kv_dim),
            "v_proj": (arch.hidden, arch.kv_dim), "o_proj": (arch.heads * arch.head_dim, arch.hidden),
            "gate_proj": (arch.hidden, arch.intermediate), "up_proj": (arch.hidden, arch.intermediate),
            "down_proj": (arch.intermediate, arch.hidden)}
    per_layer = sum(lora.r * (i + o) for m, (i, o) in dims.items() if m in lora.target_modules)
    embeddings = (1 if arch.tied else 2) * arch.embedding_params() if lora.train_embeddings else 0
    if "embed_tokens" in lora.target_modules:  # lora_embedding_A [r, vocab] + B [hidden, r]
        embeddings += lora.r * (arch.vocab + arch.hidden)
    return arch.layers * per_layer + embeddings


def trained_architecture(model_cfg, vocab: Optional[int] = None) -> Architecture:
    """The shape as trained: new special tokens grow the vocabulary, padded as the trainer pads it."""
    arch = architecture(model_cfg, vocab)
    pad = model_cfg.pad_vocab_to_multiple_of
    arch.vocab = -(-(arch.vocab + len(model_cfg.new_tokens)) // pad) * pad
    return arch


def trainable_params(arch: Architecture, model_cfg) -> int:
    return arch.total_params() if model_cfg.finetune == "full" else lora_trainable(arch, model_cfg.lora)
