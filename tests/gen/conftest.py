"""A tiny HF model directory (random weights, head_dim 32) that vLLM can load."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    from delia_dist.model.tiny import build_model, llama_config
    out = tmp_path_factory.mktemp("vllm-model")
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    build_model(llama_config(len(tok))).save_pretrained(out)
    tok.save_pretrained(out)
    return out
