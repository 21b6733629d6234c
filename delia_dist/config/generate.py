"""Generation section: diverse self-sampling (vLLM) and instruction diversification (openai)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .errors import ConfigValueError


@dataclass
class SampleConfig:
    model: Optional[str] = None
    input: Optional[str] = None
    output: Optional[str] = None
    system_prompt: str = "You are a helpful AI assistant."
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 512
    n: int = 1
    # Part p is generated with seed + p, so a part is reproducible on its own.
    seed: int = 0
    tensor_parallel_size: int = 1
    max_shard_mb: float = 256.0

    def validate(self) -> None:
        for name in ("n", "max_tokens", "tensor_parallel_size"):
            if getattr(self, name) < 1:
                raise ConfigValueError(name, "must be >= 1")
        if self.temperature < 0:
            raise ConfigValueError("temperature", "must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ConfigValueError("top_p", "must be in (0, 1]")
        if self.max_shard_mb <= 0:
            raise ConfigValueError("max_shard_mb", "must be > 0")


@dataclass
class DiversifyConfig:
    base_url: Optional[str] = None
    model: str = "gpt-4"
    # The API key is read from this environment variable only, never from a file.
    api_key_env: str = "OPENAI_API_KEY"
    k: int = 60
    max_concurrency: int = 8
    max_retries: int = 6
    timeout_s: float = 60.0
    temperature: float = 1.0
    # A candidate whose difflib ratio to the original or to an accepted paraphrase is above
    # this is a near-duplicate and rejected (DELIA wants anisotropic variety).
    max_similarity: float = 0.9
    # Rounds of asking again for the paraphrases still missing after validation.
    max_rounds: int = 4
    cache_dir: Optional[str] = None

    def validate(self) -> None:
        for name in ("k", "max_concurrency", "max_rounds"):
            if getattr(self, name) < 1:
                raise ConfigValueError(name, "must be >= 1")
        if self.max_retries < 0:
            raise ConfigValueError("max_retries", "must be >= 0")
        if self.timeout_s <= 0:
            raise ConfigValueError("timeout_s", "must be > 0")
        if not 0 < self.max_similarity <= 1:
            raise ConfigValueError("max_similarity", "must be in (0, 1]")


@dataclass
class GenerateConfig:
    sample: SampleConfig = field(default_factory=SampleConfig)
    diversify: DiversifyConfig = field(default_factory=DiversifyConfig)
