"""Learning-rate schedule: linear warm-up, then cosine, linear decay or constant.

Ours rather than DeepSpeed's so it is a plain stateful object in our checkpoint, and the
same on every backend.
"""
from __future__ import annotations

import math


class LRSchedule:
    def __init__(self, lr: float, warmup_steps: int, max_steps: int, kind: str = "cosine",
                 min_lr_ratio: float = 0.0):
        self.lr, self.warmup, self.max_steps = lr, warmup_steps, max(1, max_steps)
        self.kind, self.min_lr = kind, lr * min_lr_ratio
        self.step = 0
        self.anchor: tuple[int, float] | None = None  # (step, progress) where the length last changed

    def progress(self, step: int) -> float:
        if self.anchor is not None:  # linear up to the anchor, then over the new length
            s0, p0 = self.anchor
            if step < s0:
                return p0 * (step - self.warmup) / max(1, s0 - self.warmup)
            return min(1.0, p0 + (1.0 - p0) * (step - s0) / max(1, self.max_steps - s0))
        return min(1.0, (step - self.warmup) / max(1, self.max_steps - self.warmup))

    def resize(self, max_steps: int) -> None:
        """Spread the rest of the decay over a new total (an elastic resume under a token
        budget changes how many steps are left): the lr continues without a jump."""
        s0 = max(self.step, self.warmup)
        self.anchor = (s0, self.progress(s0))
        self.max_steps = max(s0 + 1, max_steps)

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.kind == "constant":
            return self.lr
        progress = self.progress(step)
        if self.kind == "linear":
            return self.min_lr + (self.lr - self.min_lr) * (1.0 - progress)
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def apply(self, optimizer) -> float:
        """Set the lr for the optimizer step about to happen."""
        lr = self.lr_at(self.step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def advance(self) -> None:
        self.step += 1

    def state_dict(self) -> dict:
        return {"step": self.step, "max_steps": self.max_steps, "anchor": self.anchor}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.saved_max_steps = state.get("max_steps")  # the length the run had (see checkpoint_elastic)
        self.anchor = tuple(state["anchor"]) if state.get("anchor") is not None else None
