"""In-process checks of the trainer's pieces (no ranks): LR schedule, the loss wrapper's
gradients against the naive full-logits path, per-source sums, checkpoint selection."""
from __future__ import annotations

import math

import torch

from delia_dist.checkpoint.manager import CheckpointManager
from delia_dist.config.train import LossConfig
from delia_dist.train.loss import CausalLMWithLoss, per_source
from delia_dist.train.schedule import LRSchedule


def test_schedule_warmup_cosine_and_state_roundtrip():
    s = LRSchedule(1.0, warmup_steps=4, max_steps=14, kind="cosine", min_lr_ratio=0.1)
    assert [s.lr_at(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s.lr_at(4) == 1.0 and math.isclose(s.lr_at(9), 0.55) and math.isclose(s.lr_at(14), 0.1)
    assert LRSchedule(1.0, 0, 10, "linear").lr_at(5) == 0.5 and LRSchedule(1.0, 0, 10, "constant").lr_at(9) == 1.0
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=123.0)
    for _ in range(6):
        s.apply(opt)
        s.advance()
    resumed = LRSchedule(1.0, warmup_steps=4, max_steps=14, kind="cosine", min_lr_ratio=0.1)
    resumed.load_state_dict(s.state_dict())
    assert resumed.apply(opt) == s.lr_at(6) == opt.param_groups[0]["lr"]


def test_chunked_loss_gradients_match_naive(tiny_model_config):
    from delia_dist.model.tiny import build_model
    torch.manual_seed(0)
    model = build_model(tiny_model_config)
    ids = torch.randint(0, tiny_model_config["vocab_size"], (2, 16))
    labels = ids.roll(-1, dims=1)
    labels[:, -1] = -100
    labels[0, :5] = -100
    pos = torch.arange(16).repeat(2, 1)
    results = {}
    for impl in ("naive", "chunked"):
        cfg = LossConfig(impl=impl, chunk_size=7)
        wrapper = CausalLMWithLoss(model, cfg, zero3=False)
        model.zero_grad()
        total, tokens = wrapper(ids, pos, labels)
        total.backward()
        results[impl] = (total.detach(), tokens, {n: p.grad.clone() for n, p in model.named_parameters()})
    (t0, k0, g0), (t1, k1, g1) = results["naive"], results["chunked"]
    torch.testing.assert_close(t1, t0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k1, k0, rtol=1e-5, atol=1e-5)
    assert (k0[labels == -100] == 0).all() and (k0[labels != -100] > 0).all()
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6, msg=n)


def test_per_source_sums_and_counts_skip_ignored_and_padding():
    losses = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 5.0, 0.0, 0.0]])
    labels = torch.tensor([[7, 7, 7, -100], [7, 7, -100, -100]])
    sources = torch.tensor([[0, 0, 1, 1], [1, 1, -1, -1]])
    out = per_source(losses, labels, sources, 2)
    assert out.tolist() == [3.0, 12.0, 2.0, 3.0]


def test_resume_auto_picks_newest_complete_and_retention_keeps_last_k(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    assert mgr.resolve("auto") is None
    for step in (2, 4, 6):
        d = tmp_path / f"step_{step}"
        d.mkdir()
        (d / "COMPLETE").write_text(str(step))
    (tmp_path / "step_8").mkdir()  # crashed before its COMPLETE marker
    (tmp_path / "latest").write_text("step_8")
    assert mgr.resolve("auto") == tmp_path / "step_6"
    (tmp_path / ".tmp-step_10").mkdir()
    mgr._retain()
    assert [s for s, _ in mgr.complete_steps()] == [4, 6] and not (tmp_path / ".tmp-step_10").exists()
    assert mgr.resolve("none") is None and mgr.resolve(str(tmp_path / "step_4")) == tmp_path / "step_4"
    try:
        mgr.resolve(str(tmp_path / "step_8"))
    except FileNotFoundError as e:
        assert "COMPLETE" in str(e)
    else:
        raise AssertionError("an incomplete checkpoint path must be refused")
