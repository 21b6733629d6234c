"""The training loop: build, resume, step, checkpoint, report.

One code path from 2 CPU ranks over gloo to 64 H100s: the launcher hands in a DistEnv,
everything distributed goes through delia_dist.distributed, and every stateful piece
(model + optimizer in DeepSpeed, schedule, data stream, RNG, tracker) is saved together.
"""
from __future__ import annotations

import json
import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from . import checkpoint_elastic as elastic
from . import distributed
from .checkpoint import CheckpointManager, rng_state, set_rng_state
from .config import Config, config_from_dict, to_dict

log = logging.getLogger("delia.train")


@dataclass
class TrainResult:
    status: str  # completed | preempted
    step: int
    checkpoint: Optional[str]
    run_id: Optional[str]


def max_steps_for(cfg: Config, world_size: int) -> int:
    if cfg.train.max_steps is not None:
        return cfg.train.max_steps
    if cfg.data.token_budget is None:
        raise ValueError("set train.max_steps or data.token_budget")
    per_step = cfg.data.seq_len * cfg.train.micro_batch_size * cfg.train.grad_accum * world_size
    return max(1, cfg.data.token_budget // per_step)


def ds_config_for(cfg: Config, world_size: int) -> dict:
    t = cfg.train
    return cfg.deepspeed.render(micro_batch_size=t.micro_batch_size, grad_accum=t.grad_accum,
                                world_size=world_size, precision=t.precision, lr=t.lr, betas=t.betas,
                                eps=t.eps, weight_decay=t.weight_decay, grad_clip=t.grad_clip)


def _param_groups(module, weight_decay: float):
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class MetricsLog:
    """Rank 0's per-step metrics as JSONL in the run dir: the record tests and tools read,
    independent of any tracking server."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def run_training(cfg: Config, env, stop_requested: Callable[[], bool] = lambda: False,
                 timeout_s: float = 600.0) -> TrainResult:
    import deepspeed

    from .data import build_train_stream
    from .loss import CausalLMWithLoss, per_source
    from .model import build_model, load_tokenizer
    from .schedule import LRSchedule
    from .tracking import Tracker

    device = distributed.init(env, timeout_s=timeout_s)
    rank, world = env.rank, env.world_size
    torch.manual_seed(cfg.train.seed)
    run_dir = Path(cfg.run_dir)
    ckpt = CheckpointManager(cfg.checkpoint_dir, cfg.checkpoint.keep_last)
    resume_from = ckpt.resolve(cfg.checkpoint.resume)
    if resume_from is not None:
        saved = json.loads((resume_from / "trainer_state.json").read_text())
        elastic.check_resume_compatible(cfg, config_from_dict(saved["config"]))
        cfg = _resume_config(cfg, config_from_dict(saved["config"]))

    ds_config = ds_config_for(cfg, world)
    tokenizer = load_tokenizer(cfg.model)
    model, token_report = build_model(cfg.model, tokenizer, ds_config, cfg.train.precision, seed=cfg.train.seed)
    zero3 = cfg.deepspeed.stage == 3
    wrapper = CausalLMWithLoss(model, cfg.loss, zero3=zero3)
    engine, optimizer, _, _ = deepspeed.initialize(
        model=wrapper, model_parameters=_param_groups(wrapper, cfg.train.weight_decay), config=ds_config)
    engine.train()

    total_steps = max_steps_for(cfg, world)
    schedule = LRSchedule(cfg.train.lr, cfg.train.warmup_steps, total_steps, cfg.train.schedule,
                          cfg.train.min_lr_ratio)
    stream = build_train_stream(cfg.data, tokenizer, rank=rank, world_size=world,
                                micro_batch_size=cfg.train.micro_batch_size)
    names = stream.source_names
    tracker = Tracker(cfg.tracking, run_dir, enabled=env.is_main)
    counters = {"step": 0, "tokens": 0, "loss_tokens": 0, "wall_s": 0.0}

    if resume_from is not None:
        rank_state, shared = CheckpointManager.load(engine, resume_from)
        set_rng_state(rank_state["rng"])
        stream.load_state_dict(rank_state["stream"])
        schedule.load_state_dict(shared["schedule"])
        counters.update(shared["counters"])
        total_steps = elastic.steps_after_resume(cfg, world, counters, schedule, total_steps,
                                                 shared.get("world_size"))
        tracker.load_state_dict(shared.get("tracker") or {})
        log.info("resumed from %s at step %d", resume_from, counters["step"])
    tracker.start(to_dict(cfg), tags={
        "git_commit": _git_commit() or "unknown", "model": cfg.model.name_or_path or "from-config",
        "world_size": str(world), "nodes": str(env.num_nodes), "device": device,
        "finetune": cfg.model.finetune, "launcher": env.launcher,
        "restart_count": str(env.restart_count)})
    metrics_log = MetricsLog(run_dir / "metrics.jsonl", env.is_main)
    if resume_from is None:
        start = {"step": 0, "vocab/new_rows": token_report["new_vocab"] - token_report["old_vocab"],
                 "params/max_rank_fraction": distributed.max_over_ranks(_local_param_fraction(wrapper))}
        metrics_log.write(start)
        tracker.log_metrics(start, step=0)
    log_every = cfg.tracking.log_every
    status, last_ckpt = "completed", None
    data_iter = iter(stream)
    window = torch.zeros(2 * len(names) + 2, dtype=torch.float64)
    t_last = time.perf_counter()

    def save(step: int) -> Path:
        shared = {"step": step, "schedule": schedule.state_dict(), "counters": counters,
                  "tracker": tracker.state_dict(), "config": to_dict(cfg), "new_tokens": token_report}
        shared = distributed.broadcast_object(shared)  # rank 0's tracker run id for everyone
        path = ckpt.save(engine, step, {"rng": rng_state(), "stream": stream.state_dict()}, shared, tokenizer)
        if env.is_main:
            tracker.log_metrics({"checkpoint/step": step}, step=step)
            tracker.set_tags({"last_checkpoint": str(path)})
        return path

    while counters["step"] < total_steps:
        step_t0 = time.perf_counter()
        step_stats = torch.zeros_like(window)
        out_of_data = False
        for _ in range(cfg.train.grad_accum):
            batch = next(data_iter, None)
            if not distributed.all_ranks(batch is not None):
                out_of_data = True
                break
            batch = {k: v.to(device) for k, v in batch.items()}
            loss_sum, losses = engine(batch["input_ids"], batch["position_ids"], batch["labels"])
            n_tokens = (batch["labels"] != -100).sum()
            loss = loss_sum / n_tokens.clamp(min=1)
            schedule.apply(optimizer)
            engine.backward(loss)
            engine.step()
            src = per_source(losses.cpu(), batch["labels"].cpu(), batch["source_ids"].cpu(), len(names))
            step_stats += torch.cat([src, torch.tensor([float((batch["segment_ids"] > 0).sum()),
                                                        float(batch["input_ids"].numel())], dtype=torch.float64)])
        if out_of_data:
            log.info("data exhausted at step %d", counters["step"])
            break
        schedule.advance()
        counters["step"] += 1
        counters["budget_tokens"] = counters.get("budget_tokens", 0) + elastic.budget_tokens_per_step(cfg, world)
        step = counters["step"]
        glob = distributed.all_reduce_sum(step_stats)
        sums, counts = glob[:len(names)], glob[len(names):2 * len(names)]
        counters["loss_tokens"] += int(counts.sum())
        counters["tokens"] += int(glob[-2])
        counters["wall_s"] += time.perf_counter() - step_t0
        loss_value = float(sums.sum() / counts.sum().clamp(min=1))
        record = {"step": step, "loss": loss_value, "lr": schedule.lr_at(step - 1)}
        for i, name in enumerate(names):
            if counts[i] > 0:
                record[f"loss/{name}"] = float(sums[i] / counts[i])
        window += glob
        if step % log_every == 0 or step == total_steps:
            record.update(_window_metrics(window, names, stream, log_every, time.perf_counter() - t_last, world))
            grad_norm = engine.get_global_grad_norm()
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            tracker.log_metrics(record, step=step)
            if env.is_main:
                log.info("step %d/%d loss %.4f lr %.2e", step, total_steps, loss_value, record["lr"])
            window.zero_()
            t_last = time.perf_counter()
        if cfg.eval.every_steps and step % cfg.eval.every_steps == 0 and cfg.eval.alignment.keywords:
            record.update(_alignment(engine, tokenizer, cfg))
            tracker.log_metrics({k: v for k, v in record.items() if k.startswith("align")}, step=step)
        metrics_log.write(record)
        preempt = distributed.any_rank(stop_requested())
        if preempt or step % cfg.checkpoint.every_steps == 0:
            last_ckpt = save(step)
        if preempt:
            status = "preempted"
            break

    if status == "completed" and cfg.checkpoint.save_on_exit and (
            last_ckpt is None or not str(last_ckpt).endswith(f"step_{counters['step']}")):
        last_ckpt = save(counters["step"])
    summary = {"status": status, "step": counters["step"], "train_wall_s": counters["wall_s"],
               "steps_per_s": counters["step"] / max(counters["wall_s"], 1e-9),
               "tokens": counters["tokens"], "peak_rss_mb_max_rank": distributed.max_over_ranks(_peak_rss_mb())}
    tracker.log_metrics({"memory/peak_rss_mb_max_rank": summary["peak_rss_mb_max_rank"]}, step=counters["step"])
    if env.is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    run_id = tracker.run_id
    tracker.close("FINISHED" if status == "completed" else "KILLED")
    return TrainResult(status=status, step=counters["step"],
                       checkpoint=str(last_ckpt) if last_ckpt else None, run_id=run_id)


def _peak_rss_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _alignment(engine, tokenizer, cfg) -> dict:
    """New-token vs keyword distances on the live model. Every rank runs it: under ZeRO-3
    the forward gathers partitioned weights collectively."""
    from .eval.alignment import alignment_metrics
    was_training = engine.module.training
    engine.module.eval()
    try:
        return alignment_metrics(engine.module.model, tokenizer, cfg.eval.alignment.keywords,
                                 cfg.eval.alignment.layers)
    finally:
        engine.module.train(was_training)


def _local_param_fraction(module) -> float:
    """Share of all parameter elements this rank stores (1/world under ZeRO-3, 1.0 unsharded)."""
    local = full = 0
    for p in module.parameters():
        if hasattr(p, "ds_tensor"):
            local += p.ds_tensor.numel()
            full += p.ds_numel
        else:
            local += p.numel()
            full += p.numel()
    return local / max(full, 1)


def _window_metrics(window: torch.Tensor, names: list[str], stream, steps: int, seconds: float,
                    world: int) -> dict:
    """Throughput, token shares and data counters since the last log line (all ranks)."""
    n = len(names)
    counts = window[n:2 * n]
    out = {"tokens_per_s": float(window[-2]) / max(seconds, 1e-9),
           "packing_efficiency": float(window[-2] / window[-1].clamp(min=1))}
    stats = stream.stats()
    local = torch.tensor([[stats[s]["tokens"], stats[s]["samples"]] for s in names], dtype=torch.float64)
    totals = distributed.all_reduce_sum(local)
    all_tokens = float(totals[:, 0].sum()) or 1.0
    for i, name in enumerate(names):
        out[f"tokens/{name}"] = float(totals[i, 0])
        out[f"samples/{name}"] = float(totals[i, 1])
        out[f"share/{name}"] = float(totals[i, 0]) / all_tokens
        out[f"loss_tokens/{name}"] = float(counts[i])
    reasons = sorted({r for s in names for r in stats[s]["skipped"]})
    if reasons:
        skipped = torch.tensor([sum(stats[s]["skipped"].get(r, 0) for s in names) for r in reasons],
                               dtype=torch.float64)
        for r, v in zip(reasons, distributed.all_reduce_sum(skipped).tolist()):
            out[f"skipped/{r}"] = v
    return out


def _resume_config(cfg: Config, saved: Config) -> Config:
    """Resuming keeps what defines the run (model, data, schedule) from the checkpoint, and
    takes run-control settings (step limit, checkpointing, tracking) from the new config."""
    changed = [k for k in ("model", "data", "loss", "deepspeed") if to_dict(getattr(cfg, k)) != to_dict(getattr(saved, k))]
    if changed:
        log.warning("resuming with the checkpoint's %s settings; the given config differs there "
                    "(start a new run_dir to use the new settings)", ", ".join(changed))
    saved.train.max_steps = cfg.train.max_steps
    saved.checkpoint = cfg.checkpoint
    saved.tracking = cfg.tracking
    saved.eval = cfg.eval
    return saved
