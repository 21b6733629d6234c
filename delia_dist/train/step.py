"""One optimizer step: agree across ranks, then forward/backward over the micro-batches.

Host syncs per step: one small all-reduce of host numbers (the `StepPlan`), nothing else.
The per-source loss sums stay on the device until a log step (see train_state.MetricsWindow).

The loss is normalised by the GLOBAL count of loss tokens of the step (all ranks, all
micro-batches): the accumulated gradient is d(sum of every token loss)/d(theta) / count, so
a rank or micro-batch with few loss tokens weighs by its tokens, not as much as a full one.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .. import distributed
from .profile import NULL


@dataclass(frozen=True)
class StepPlan:
    """What every rank agreed on before the step, from one all-reduce."""
    run: bool  # every rank has its micro-batches (else the data is exhausted)
    stop: bool  # some rank was asked to stop: checkpoint after this step and exit
    loss_tokens: int  # tokens with a label, all ranks and micro-batches
    tokens: int  # non-padding tokens, all ranks
    slots: int  # token slots (tokens + padding), all ranks


def next_micro_batches(data_iter: Iterator, n: int, empty: Callable[[], dict] | None = None) -> list[dict] | None:
    """This rank's n micro-batches of the step (host tensors), or None if it ran out. With
    `empty` (a padding-only batch), a step the data ends in is completed with those."""
    batches = []
    for _ in range(n):
        batch = next(data_iter, None)
        if batch is None:
            if empty is None or not batches:
                return None
            batch = empty()
        batches.append(batch)
    return batches


def agree(batches: list[dict] | None, stop_requested: bool, until_all_done: bool = False) -> StepPlan:
    """One all-reduce of host numbers: data left, stop flag and the step's token counts.
    All are read from the host batches, so nothing waits for the GPU. The step runs while
    every rank has data, or (until_all_done) while any rank has."""
    have = batches is not None
    local = [0.0 if have else 1.0, 1.0 if stop_requested else 0.0,
             sum(int((b["labels"] != -100).sum()) for b in batches) if have else 0,
             sum(int((b["segment_ids"] > 0).sum()) for b in batches) if have else 0,
             sum(b["input_ids"].numel() for b in batches) if have else 0]
    missing, stop, loss_tokens, tokens, slots = distributed.sum_host(local)
    run = missing < distributed.world_size() if until_all_done else missing == 0
    return StepPlan(run=bool(run), stop=stop > 0, loss_tokens=int(loss_tokens), tokens=int(tokens),
                    slots=int(slots))


def loss_scale(global_loss_tokens: int, grad_accum: int, world: int) -> float:
    """Factor on a micro-batch's summed loss so that DeepSpeed's own scaling (engine.backward
    divides by grad_accum, the gradient reduction averages over the data-parallel world)
    leaves d(sum of all token losses)/d(theta) / global_loss_tokens."""
    return grad_accum * world / max(global_loss_tokens, 1)


def train_step(engine, batches: list[dict], plan: StepPlan, n_sources: int, profile=NULL) -> torch.Tensor:
    """Forward/backward/step over this rank's micro-batches; returns the per-source loss sums
    and counts ([2 * n_sources], float64) on the device, unsynchronised. `profile` (a
    train.profile.StepProfile) times the phases."""
    from .loss import per_source
    device = distributed.device()
    scale = loss_scale(plan.loss_tokens, engine.gradient_accumulation_steps(), distributed.world_size())
    stats = torch.zeros(2 * n_sources, dtype=torch.float64, device=device)
    for batch in batches:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with profile.phase("forward"):
            loss_sum, losses = engine(batch["input_ids"], batch["position_ids"], batch["labels"])
        with profile.phase("backward"):
            engine.backward(loss_sum * scale)
        with profile.phase("optimizer"):
            engine.step()  # DeepSpeed steps the optimizer at the accumulation boundary only
        with profile.phase("logging"):
            stats += per_source(losses, batch["labels"], batch["source_ids"], n_sources)
    return stats
