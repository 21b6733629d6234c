"""Packed rows: two samples in one row, positions restarting at 0, must give each sample
exactly the hidden states it gets alone (no attention across the sample boundary)."""
from __future__ import annotations

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
