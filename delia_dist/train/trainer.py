"""The training loop: build, resume, step, checkpoint, report.

One code path from 2 CPU ranks over gloo to 64 H100s: the launcher hands in a DistEnv,
everything distributed goes through delia_dist.distributed, and every stateful piece
(model + optimizer in DeepSpeed, schedule, data stream, RNG, tracker) is declared once to
the checkpoint manager, which saves and restores them together. `Trainer` builds the run
and takes the decisions around a step (log, evaluate, checkpoint, stop); step.py runs one
step; state.py holds the counters and metrics window; metrics.py measures the rest.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from .. import atomic, distributed, storage
from ..checkpoint import elastic, io_bound, room, trainer_state
from ..checkpoint.manager import CheckpointManager
from ..checkpoint.parts import RNG, Parts
from ..config import Config, to_dict
from . import profile as step_profile
from .metrics import MetricsLog, alignment, local_param_fraction, log_metrics, peak_rss_mb
from .state import MetricsWindow, TrainState
from .step import agree, next_micro_batches, train_step

log = logging.getLogger("delia.train")


@dataclass
class TrainResult:
    status: str  # completed | preempted
    step: int
    checkpoint: Optional[str]
    run_id: Optional[str]


def tokens_per_step(cfg: Config, world_size: int) -> int:
    return cfg.data.seq_len * cfg.train.micro_batch_size * cfg.train.grad_accum * world_size


def max_steps_for(cfg: Config, world_size: int) -> int:
    """train.max_steps, else data.token_budget's steps, else (data.downstream_once) the steps
    one pass over the downstream data takes by the shard manifests (an estimate for the lr
    schedule: that run ends when the data does)."""
    if cfg.train.max_steps is not None:
        return cfg.train.max_steps
    if cfg.data.token_budget is None and not cfg.data.downstream_once:
        raise ValueError("set train.max_steps, data.token_budget or data.downstream_once")
    from ..data.mix_plan import resolve_mix
    mix = resolve_mix(cfg.data, tokens_per_step(cfg, world_size))
    if mix.expected_steps is None:
        raise ValueError(f"cannot derive the run's length: {mix.steps_from}; set train.max_steps")
    return mix.expected_steps


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


def run_training(cfg: Config, env, stop_requested: Callable[[], bool] = lambda: False,
                 timeout_s: float = 600.0,
                 rendezvous_timeout_s: Optional[float] = None) -> TrainResult:
    # The slow imports first: on 64 ranks reading them from a shared filesystem, their skew
    # is then absorbed by the rendezvous timeout, not by the first collective's.
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    from .. import data, tracking  # noqa: F401
    from ..model import build  # noqa: F401
    from . import loss  # noqa: F401
    device = distributed.init(env, timeout_s=timeout_s, rendezvous_timeout_s=rendezvous_timeout_s)
    # A wrong or read-only path fails now, on every rank alike, not at the first save.
    storage.raise_first(distributed.all_gather_object(storage.unwritable(storage.run_dirs(cfg, env.is_main))))
    return Trainer(cfg, env, device).fit(stop_requested)


class Trainer:
    """The run's live pieces (engine, schedule, data stream, tracker, counters) and the
    decisions around each step: when to log, evaluate, checkpoint and stop."""

    def __init__(self, cfg: Config, env, device: str):
        import deepspeed

        from ..data import build_train_stream
        from ..model.build import build_model, load_tokenizer
        from ..tracking import Tracker
        from .loss import CausalLMWithLoss
        from .schedule import LRSchedule

        self.env, self.device = env, device
        world = env.world_size
        torch.manual_seed(cfg.train.seed)
        self.run_dir = Path(cfg.run_dir)
        self.ckpt = CheckpointManager(cfg.checkpoint_dir, cfg.checkpoint.keep_last)
        self.resumed_from = self.ckpt.resolve(cfg.checkpoint.resume)
        if self.resumed_from is not None:
            cfg = _resume_config(cfg, trainer_state.read(self.resumed_from).config())
        self.cfg = cfg

        ds_config = ds_config_for(cfg, world)
        self.tokenizer = load_tokenizer(cfg.model)
        with distributed.longer_timeout(io_bound.model_load_s(cfg)):
            model, self.token_report = build_model(cfg.model, self.tokenizer, ds_config, cfg.train.precision,
                                                   seed=cfg.train.seed)
        self.wrapper = CausalLMWithLoss(model, cfg.loss, zero3=cfg.deepspeed.stage == 3)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=self.wrapper, model_parameters=_param_groups(self.wrapper, cfg.train.weight_decay),
            config=ds_config)
        self.engine.train()
        distributed.set_io_timeout(io_bound.checkpoint_s(self.engine.module, cfg))

        self.total_steps = max_steps_for(cfg, world)
        from ..data.mix_plan import resolve_mix
        self.mix = resolve_mix(cfg.data, tokens_per_step(cfg, world), cfg.train.max_steps)
        # downstream_once without a step limit runs until every rank's downstream share is used
        self.until_exhausted = cfg.data.downstream_once and cfg.train.max_steps is None \
            and cfg.data.token_budget is None
        self.schedule = LRSchedule(cfg.train.lr, cfg.train.warmup_steps, self.total_steps, cfg.train.schedule,
                                   cfg.train.min_lr_ratio)
        self.stream = build_train_stream(cfg.data, self.tokenizer, rank=env.rank, world_size=world,
                                         micro_batch_size=cfg.train.micro_batch_size)
        self.tracker = Tracker(cfg.tracking, self.run_dir, enabled=env.is_main)
        self.state = TrainState()
        self.ckpt.compose(self.engine, self.tokenizer, Parts(
            per_rank={"rng": RNG(), "stream": self.stream},
            shared={"schedule": self.schedule, "counters": self.state, "tracker": self.tracker},
            records={"config": lambda: to_dict(self.cfg), "new_tokens": lambda: self.token_report}))
        if self.resumed_from is not None:
            self.resume()
        self.stream.fill_buffers()  # before step 1 on every rank, not at a source's first draw
        self.window = MetricsWindow(self.stream.source_names, cfg.tracking.log_every)
        self.metrics_log = MetricsLog(self.run_dir / "metrics.jsonl", env.is_main)

    def resume(self) -> None:
        saved = self.ckpt.restore(self.resumed_from)
        # Under a token budget the steps left depend on this world size; counters saved
        # before budget_tokens existed get it from their step count there.
        counters = saved.part("counters")
        self.total_steps = elastic.steps_after_resume(self.cfg, self.env.world_size, counters, self.schedule,
                                                      self.total_steps, saved.world_size)
        self.state.budget_tokens = counters["budget_tokens"]
        log.info("resumed from %s at step %d", self.resumed_from, self.state.step)

    def fit(self, stop_requested: Callable[[], bool]) -> TrainResult:
        cfg, env, state = self.cfg, self.env, self.state
        from ..tracking.datasets import source_datasets
        from ..tracking.ui_tags import source_tags

        if env.is_main:
            for line in self.mix.lines():
                log.info("data: %s", line)
        self.tracker.start({**to_dict(cfg), "mix": self.mix.params()}, tags={
            **source_tags("delia train", job=env.launcher == "slurm"), "model": cfg.model.name_or_path or "from-config",
            "world_size": str(env.world_size), "nodes": str(env.num_nodes), "device": self.device,
            "finetune": cfg.model.finetune, "launcher": env.launcher, "restart_count": str(env.restart_count)})
        if env.is_main:
            self.tracker.log_datasets(source_datasets(cfg.data.sources))
        if self.resumed_from is None:
            start = {"step": 0, "vocab/new_rows": self.token_report["new_vocab"] - self.token_report["old_vocab"],
                     "params/max_rank_fraction": distributed.max_over_ranks(local_param_fraction(self.wrapper))}
            if cfg.eval.alignment.keywords:  # step 0: the new tokens as initialised, before any update
                start.update(alignment(self.engine, self.tokenizer, cfg))
            self.metrics_log.write(start)
            self.tracker.log_metrics(start, step=0)
        status, last_ckpt = "completed", None
        data_iter = iter(self.stream)
        self.t_log = time.perf_counter()
        n_sources = len(self.stream.source_names)
        # Under downstream_once a rank whose data ended feeds padding-only micro-batches (no
        # loss tokens: the global loss normalisation leaves them out) until every rank's has.
        empty = self.stream.empty_batch if cfg.data.downstream_once else None
        self.profile = prof = step_profile.start(cfg.train.profile, self.device, self.wrapper)
        while state.step < self.total_steps or self.until_exhausted:
            t0 = time.perf_counter()
            with prof.phase("data"):
                batches = next_micro_batches(data_iter, cfg.train.grad_accum, empty)
            with prof.phase("collectives"):
                plan = agree(batches, stop_requested(), until_all_done=empty is not None)
            if not plan.run:
                log.info("data exhausted at step %d", state.step)
                # a log step: a run that ends with its data must still log its token and sample counts
                self.flush_metrics(log_step=True)
                break
            if batches is None:
                batches = [empty() for _ in range(cfg.train.grad_accum)]
            lr = self.schedule.apply(self.optimizer)
            stats = train_step(self.engine, batches, plan, n_sources, prof)
            self.schedule.advance()
            state.advance(plan, time.perf_counter() - t0)
            state.budget_tokens += elastic.budget_tokens_per_step(cfg, env.world_size)
            with prof.phase("logging"):
                self.window.add(state.step, lr, plan, stats)
                self.after_step(state.step)
            prof.end_step()
            if plan.stop or state.step % cfg.checkpoint.every_steps == 0:
                last_ckpt = self.save(state.step)
            if plan.stop:
                status = "preempted"
                break
        self.flush_metrics(log_step=True)  # a run that ended with its data logs its last counts
        if status == "completed" and cfg.checkpoint.save_on_exit and (
                last_ckpt is None or not str(last_ckpt).endswith(f"step_{state.step}")):
            last_ckpt = self.save(state.step)
        return self.finish(status, last_ckpt)

    def after_step(self, step: int) -> None:
        """Evaluation and logging decisions; collective, so every rank takes the same ones."""
        cfg = self.cfg
        if cfg.eval.every_steps and step % cfg.eval.every_steps == 0 and cfg.eval.alignment.keywords:
            align = alignment(self.engine, self.tokenizer, cfg)
            self.window.attach(align)
            self.tracker.log_metrics({k: v for k, v in align.items() if k.startswith("align")}, step=step)
        if step % cfg.tracking.log_every == 0 or step == self.total_steps or self.window.full:
            self.flush_metrics(log_step=True)

    def flush_metrics(self, log_step: bool = False) -> None:
        """Write the window's per-step records; at a log step add throughput and data metrics
        to the last one and send it to the tracker."""
        records = self.window.flush()
        if log_step and records:
            record = records[-1]
            now = time.perf_counter()
            record.update(log_metrics(self.window.since_log(), self.stream, now - self.t_log))
            self.t_log = now
            grad_norm = self.engine.get_global_grad_norm()
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            self.tracker.log_metrics(record, step=record["step"])
            if self.env.is_main:
                log.info("step %d/%d loss %.4f lr %.2e", record["step"], self.total_steps, record["loss"],
                         record["lr"])
        for record in records:
            self.metrics_log.write(record)

    def save(self, step: int) -> Path:
        self.flush_metrics()
        with room.for_checkpoint(self.ckpt, step, self.cfg, self.env.world_size):  # checked before, named if it fails
            path = self.ckpt.save_step(step)
        if self.env.is_main:
            self.tracker.log_metrics({"checkpoint/step": step}, step=step)
            self.tracker.set_tags({"last_checkpoint": str(path)})
        return path

    def finish(self, status: str, last_ckpt: Optional[Path]) -> TrainResult:
        self.flush_metrics()
        step_profile.finish(self.profile, self.run_dir, self.env.is_main)
        state = self.state
        summary = {"status": status, "step": state.step, "train_wall_s": state.wall_s,
                   "steps_per_s": state.step / max(state.wall_s, 1e-9), "tokens": state.tokens,
                   "peak_rss_mb_max_rank": distributed.max_over_ranks(peak_rss_mb())}
        self.tracker.log_metrics({"memory/peak_rss_mb_max_rank": summary["peak_rss_mb_max_rank"]}, step=state.step)
        if self.env.is_main:
            with storage.writing("the run summary", self.run_dir):
                atomic.write_text(self.run_dir / "summary.json", json.dumps(summary, indent=1))
        run_id = self.tracker.run_id
        self.tracker.close("FINISHED" if status == "completed" else "KILLED")
        return TrainResult(status=status, step=state.step, checkpoint=str(last_ckpt) if last_ckpt else None,
                           run_id=run_id)


def _resume_config(cfg: Config, saved: Config) -> Config:
    """Resuming keeps what defines the run (model, data, schedule) from the checkpoint, and
    takes run-control settings (step limit, checkpointing, tracking) from the new config."""
    elastic.check_resume_compatible(cfg, saved)
    changed = [k for k in ("model", "data", "loss", "deepspeed")
               if to_dict(getattr(cfg, k)) != to_dict(getattr(saved, k))]
    if changed:
        log.warning("resuming with the checkpoint's %s settings; the given config differs there "
                    "(start a new run_dir to use the new settings)", ", ".join(changed))
    saved.train.max_steps = cfg.train.max_steps
    saved.checkpoint = cfg.checkpoint
    saved.tracking = cfg.tracking
    saved.eval = cfg.eval
    return saved
