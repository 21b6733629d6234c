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
    seed: int = 0
    tensor_parallel_size: int = 1
    samples_per_shard: int = 10_000

    def validate(self) -> None:
        if self.n < 1:
            raise ConfigValueError("n", "must be >= 1")


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
    max_similarity: float = 0.9
    cache_dir: Optional[str] = None

    def validate(self) -> None:
        if self.k < 1:
            raise ConfigValueError("k", "must be >= 1")


@dataclass
class GenerateConfig:
    sample: SampleConfig = field(default_factory=SampleConfig)
    diversify: DiversifyConfig = field(default_factory=DiversifyConfig)
