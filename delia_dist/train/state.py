"""What the training loop carries between steps: the saved counters and the metrics window.

The window keeps each step's per-source loss sums on the device and reads them back only
when it is flushed (a log step, a checkpoint, the end): one all-reduce and one copy per
flush instead of a host sync per micro-batch. Host-side numbers of a step (lr, token
counts from the step's plan) are kept beside them, so metrics.jsonl still gets one record
per step, written at the flush.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from .. import distributed
from .step import StepPlan


@dataclass
class TrainState:
    """Counters saved in every checkpoint ("counters" in the shared trainer state)."""
    step: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    wall_s: float = 0.0
    budget_tokens: int = 0  # data.token_budget units spent: steps left after an elastic resume

    def advance(self, plan: StepPlan, seconds: float) -> None:
        self.step += 1
        self.tokens += plan.tokens
        self.loss_tokens += plan.loss_tokens
        self.wall_s += seconds

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            if k not in self.__dataclass_fields__:
                raise KeyError(f"checkpoint counters have an unknown key {k!r}")
            setattr(self, k, type(getattr(self, k))(v))


@dataclass
class _Pending:
    step: int
    lr: float
    plan: StepPlan
    extra: dict = field(default_factory=dict)


class MetricsWindow:
    """Per-step metrics since the last flush; at most `capacity` steps (the log interval)."""

    def __init__(self, names: list[str], capacity: int):
        self.names = list(names)
        self.sums = torch.zeros(capacity, 2 * len(self.names), dtype=torch.float64, device=distributed.device())
        self.pending: list[_Pending] = []
        self._since_log = {"tokens": 0, "slots": 0, "loss_tokens": torch.zeros(len(self.names), dtype=torch.float64)}

    @property
    def full(self) -> bool:
        return len(self.pending) == self.sums.shape[0]

    def add(self, step: int, lr: float, plan: StepPlan, source_stats: torch.Tensor) -> None:
        """Record a step; source_stats is train_step's device tensor (not read here)."""
        if self.full:
            raise RuntimeError("metrics window is full: flush it at every log step")
        self.sums[len(self.pending)].copy_(source_stats)
        self.pending.append(_Pending(step, lr, plan))
        self._since_log["tokens"] += plan.tokens
        self._since_log["slots"] += plan.slots

    def attach(self, metrics: dict) -> None:
        """Extra metrics (e.g. alignment) for the latest step's record."""
        self.pending[-1].extra.update(metrics)

    def since_log(self) -> dict:
        """Global tokens, token slots and per-source loss tokens since the last call
        (flush first); resets them."""
        out = self._since_log
        self._since_log = {"tokens": 0, "slots": 0, "loss_tokens": torch.zeros_like(out["loss_tokens"])}
        return out

    def flush(self) -> list[dict]:
        """One record per pending step (global losses); empties the window. Collective:
        every rank calls it at the same steps."""
        if not self.pending:
            return []
        k, n = len(self.pending), len(self.names)
        glob = distributed.sum_device(self.sums[:k].clone()).cpu()  # the one host sync
        records = []
        for p, row in zip(self.pending, glob):
            sums, counts = row[:n], row[n:]
            rec = {"step": p.step, "loss": float(sums.sum() / counts.sum().clamp(min=1)), "lr": p.lr}
            for i, name in enumerate(self.names):
                if counts[i] > 0:
                    rec[f"loss/{name}"] = float(sums[i] / counts[i])
            rec.update(p.extra)
            records.append(rec)
        self._since_log["loss_tokens"] += glob[:, n:].sum(0)
        self.sums.zero_()
        self.pending.clear()
        return records
