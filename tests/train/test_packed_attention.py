"""Packed rows: two samples in one row, positions restarting at 0, must give each sample
exactly the hidden states it gets alone (no attention across the sample boundary)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_row_equals_samples_run_alone(tiny_model_config, attn):
    from delia_dist.model.tiny import build_model
    model = build_model({**tiny_model_config, "attn_implementation": attn}).eval()
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, tiny_model_config["vocab_size"], (1, 7), generator=g)
    b = torch.randint(0, tiny_model_config["vocab_size"], (1, 5), generator=g)
    packed = torch.cat([a, b], 1)
    positions = torch.cat([torch.arange(7), torch.arange(5)])[None]
    with torch.no_grad():
        h = model.model(input_ids=packed, position_ids=positions, use_cache=False).last_hidden_state
        ha = model.model(input_ids=a, use_cache=False).last_hidden_state
        hb = model.model(input_ids=b, use_cache=False).last_hidden_state
    torch.testing.assert_close(h[:, :7], ha, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h[:, 7:], hb, rtol=1e-5, atol=1e-5)


_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHIPPED = sorted([*_CONFIGS.glob("*.yaml"), *(_CONFIGS / "paper").glob("*.yaml")])


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: p.name)
def test_each_shipped_config_keeps_packed_samples_apart(tiny_model_config, config):
    """The attention implementation a shipped config names must load from this install and
    isolate packed samples; flash_attention_2 (not installed, no CPU path) fails here."""
    from delia_dist.config import load_config
    from delia_dist.model.tiny import build_model

    attn = load_config(str(config), check_paths=False).model.attn_implementation
    model = build_model({**tiny_model_config, **({"attn_implementation": attn} if attn else {})}).eval()
    if attn:
        assert model.config._attn_implementation == attn
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, tiny_model_config["vocab_size"], (1, 6), generator=g)
    b = torch.randint(0, tiny_model_config["vocab_size"], (1, 9), generator=g)
    positions = torch.cat([torch.arange(6), torch.arange(9)])[None]
    with torch.no_grad():
        h = model.model(input_ids=torch.cat([a, b], 1), position_ids=positions, use_cache=False).last_hidden_state
        hb = model.model(input_ids=b, use_cache=False).last_hidden_state
    torch.testing.assert_close(h[:, 6:], hb, rtol=1e-5, atol=1e-5)


def test_shipped_configs_need_no_compiled_deepspeed_op():
    """DeepSpeed's own Adam JIT-compiles fused_adam on every rank at initialize (nvcc, ninja,
    a lock in ~/.cache); the install builds no ops, so every config must use torch's AdamW."""
    from delia_dist.config import load_config

    for config in SHIPPED:
        cfg = load_config(str(config), check_paths=False)
        t = cfg.train
        ds = cfg.deepspeed.render(micro_batch_size=1, grad_accum=1, world_size=64, precision=t.precision, lr=t.lr,
                                  betas=t.betas, eps=t.eps, weight_decay=t.weight_decay, grad_clip=t.grad_clip)
        assert ds["optimizer"]["params"].get("torch_adam") is True, config.name
