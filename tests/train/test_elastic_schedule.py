"""Under data.token_budget the number of steps depends on the world size: a resume on
another size must count the budget already spent and continue the lr curve without a jump."""
from __future__ import annotations

from pathlib import Path

from delia_dist.checkpoint.elastic import budget_tokens_per_step, steps_after_resume
from delia_dist.config import load_config
from delia_dist.train.schedule import LRSchedule
from delia_dist.train.trainer import max_steps_for

REPO = Path(__file__).resolve().parents[2]


def _cfg(budget: int):
    return load_config(REPO / "configs/tiny_cpu.yaml", ["train.max_steps=null", f"data.token_budget={budget}",
                                                       "train.warmup_steps=5"])


def _schedule(cfg, total):
    t = cfg.train
    return LRSchedule(t.lr, t.warmup_steps, total, t.schedule, t.min_lr_ratio)


def test_shrinking_from_2_to_1_rank_spends_the_same_budget_and_lr_has_no_jump():
    cfg = _cfg(256 * 4 * 1 * 2 * 100)  # 100 steps at 2 ranks
    two = max_steps_for(cfg, 2)
    assert two == 100
    before = _schedule(cfg, two)
    for _ in range(40):
        before.advance()
    counters = {"step": 40, "budget_tokens": 40 * budget_tokens_per_step(cfg, 2)}
    after = _schedule(cfg, max_steps_for(cfg, 1))  # what the trainer builds on 1 rank: 200 steps
    after.load_state_dict(before.state_dict())
    total = steps_after_resume(cfg, 1, counters, after, max_steps_for(cfg, 1), saved_world=2)
    assert total == 40 + 120  # 60 two-rank steps of budget left = 120 one-rank steps
    assert abs(after.lr_at(39) - before.lr_at(39)) < 1e-12  # the last step before the change
    assert abs(after.lr_at(40) - before.lr_at(40)) < 0.02 * cfg.train.lr  # no jump
    assert after.lr_at(total - 1) < after.lr_at(100) < after.lr_at(40)  # still decaying to the end
    assert abs(after.lr_at(total - 1) - before.lr_at(two - 1)) < 1e-3 * cfg.train.lr
    # The stretched curve survives a later resume at the same size.
    again = _schedule(cfg, max_steps_for(cfg, 1))
    again.load_state_dict(after.state_dict())
    counters2 = {"step": 60, "budget_tokens": counters["budget_tokens"] + 20 * budget_tokens_per_step(cfg, 1)}
    assert steps_after_resume(cfg, 1, counters2, again, max_steps_for(cfg, 1), saved_world=1) == total
    assert again.lr_at(70) == after.lr_at(70)


def test_same_size_resume_keeps_the_uninterrupted_length():
    cfg = _cfg(256 * 4 * 2 * 100 + 1000)  # not a whole number of steps
    total = max_steps_for(cfg, 2)
    s = _schedule(cfg, total)
    state = {**s.state_dict(), "step": 30}
    r = _schedule(cfg, total)
    r.load_state_dict(state)
    counters = {"step": 30}  # a checkpoint from before budget_tokens was counted
    assert steps_after_resume(cfg, 2, counters, r, total, saved_world=2) == total
    assert [r.lr_at(i) for i in range(total)] == [s.lr_at(i) for i in range(total)]


def test_explicit_max_steps_wins():
    cfg = load_config(REPO / "configs/tiny_cpu.yaml", ["train.max_steps=12"])
    s = _schedule(cfg, 8)
    s.resize(20)
    r = _schedule(cfg, 12)
    r.load_state_dict(s.state_dict())
    assert steps_after_resume(cfg, 3, {"step": 4}, r, 12, saved_world=2) == 12
    assert r.anchor is None and r.max_steps == 12
