"""The plan as a value (JSON) and as the table `delia plan` prints, with what to change."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Optional

from .checkpoint import COST_TARGET, IO_MARGIN, CheckpointTimes

GB = 1e9


@dataclass
class Plan:
    model: str
    params: int
    trainable_params: int
    gpus: int
    gpu: str
    gpu_label: str
    gpu_memory_gb: float
    stage: int
    precision: str
    micro_batch: int
    seq_len: int
    checkpointing: bool
    fused_loss: bool
    memory_gb: dict[str, float]      # per GPU, by part
    host_memory_gb: float            # per GPU, offloaded states
    total_gb: float
    fits: bool
    flops_per_token: float
    tokens_per_s: float
    mfu: float
    step_tokens: int
    hours: Optional[float]
    storage_gb: dict[str, float] = field(default_factory=dict)  # checkpoint, data state, export
    checkpoint_times: Optional[CheckpointTimes] = None
    advice: list[str] = field(default_factory=list)
    formulas: list[str] = field(default_factory=list)  # how the big numbers were counted

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def render(self) -> str:
        lines = [f"model      {self.model}: {_count(self.params)} params ({_count(self.trainable_params)} trainable)",
                 f"cluster    {self.gpus} x {self.gpu_label} ({self.gpu_memory_gb:.1f} GB each), "
                 f"ZeRO-{self.stage}, {self.precision}",
                 f"batch      micro-batch {self.micro_batch} x seq {self.seq_len}, activation checkpointing "
                 f"{'on' if self.checkpointing else 'off'}, loss {'fused' if self.fused_loss else 'unfused'}",
                 "", "per-GPU memory (GB = 1e9 bytes)"]
        for part, gb in self.memory_gb.items():
            lines.append(f"  {part:<46s}{gb:9.2f}")
        lines.append(f"  {'total':<46s}{self.total_gb:9.2f}   of {self.gpu_memory_gb:.1f}")
        states = [v for k, v in self.memory_gb.items() if k.startswith(("weights", "gradients", "optimizer"))]
        lines.append(f"  (model states {sum(states):.2f}: weights + optimizer {states[0] + states[2]:.2f}, "
                     f"gradients {states[1]:.2f})")
        if self.host_memory_gb:
            lines.append(f"  {'offloaded to host memory':<46s}{self.host_memory_gb:9.2f}")
        if self.storage_gb:
            lines += ["", "checkpoint and export (GB = 1e9 bytes)"]
            width = max(map(len, self.storage_gb))
            lines += [f"  {part:<{width}s}{gb:10.3f}" for part, gb in self.storage_gb.items()]
        if self.checkpoint_times:
            lines += ["", *_render_times(self.checkpoint_times)]
        lines += ["", "counted as"] + [f"  {f}" for f in self.formulas]
        lines += ["", f"throughput {self.tokens_per_s:,.0f} tokens/s at MFU {self.mfu:.2f} "
                      f"({self.flops_per_token / 1e9:.1f} GFLOP/token, {self.step_tokens:,} tokens/step)"]
        if self.hours is not None:
            lines.append(f"duration   {self.hours:.1f} h for the configured run")
        verdict = "FITS" if self.fits else "DOES NOT FIT"
        lines += ["", f"{verdict}: {self.total_gb:.1f} GB needed per GPU, {self.gpu_memory_gb:.1f} GB available"]
        lines += [f"  - {a}" for a in self.advice]
        return "\n".join(lines)


def _render_times(t: CheckpointTimes) -> list[str]:
    rows = [("save: whole step dir, all ranks at once", t.save_s),
            ("load: same world size", t.load_s),
            ("load: other world size (universal copy + sliced read)", t.elastic_load_s),
            ("model load at start (weights once)", t.model_load_s),
            (f"collectives may wait in a save/load ({IO_MARGIN:g} x the largest, >= {t.timeout_s:.0f} s)", t.bound_s)]
    width = max(len(r[0]) for r in rows)
    return ([f"checkpoint time at {t.bandwidth_gbps:g} GB/s (checkpoint.fs_bandwidth_gbps), seconds"]
            + [f"  {label:<{width}s}{s:10.0f}" for label, s in rows]
            + [f"  cost: one save every {t.every_steps} steps of {t.step_s:.1f} s = {t.cost:.2%} of training time "
               f"(target <= {COST_TARGET:.0%})"])


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def advice(p: Plan, cfg, mem: dict[str, float], capacity: float, world: int, gpus_per_node: int) -> list[str]:
    out = _memory_advice(p, cfg, mem, capacity, world, gpus_per_node)
    t = p.checkpoint_times
    if t and t.cost > COST_TARGET:
        out.append(f"set checkpoint.every_steps: {t.every_steps_for()} (or more) to keep saving under "
                   f"{COST_TARGET:.0%} of training time ({t.cost:.1%} at {t.every_steps})")
    return out


def _memory_advice(p: Plan, cfg, mem: dict[str, float], capacity: float, world: int,
                   gpus_per_node: int) -> list[str]:
    if p.fits:
        return [f"{(capacity - sum(mem.values())) / GB:.1f} GB headroom per GPU"]
    out = []
    over = sum(mem.values()) - capacity
    if not cfg.model.gradient_checkpointing:
        out.append("set model.gradient_checkpointing: true (keeps only each layer's input)")
    if not p.fused_loss:
        out.append("set loss.impl: fused (logits in chunks instead of the full b*s*V tensor)")
    if cfg.deepspeed.stage < 3:
        out.append("use deepspeed.stage: 3 to shard the weights too")
    states = sum(v for k, v in mem.items() if k.startswith(("weights", "gradients", "optimizer")))
    if states > capacity / 2 and cfg.deepspeed.stage == 3:
        # Leave half of each GPU to activations, logits and the gathered working set.
        nodes = -(-int(states * world / (capacity / 2) + 1) // gpus_per_node)
        out.append(f"shard the states over more GPUs: {nodes} nodes x {gpus_per_node} keeps them under half "
                   f"of each GPU ({states / GB:.1f} GB per GPU now)")
    if cfg.train.micro_batch_size > 1:
        out.append("lower train.micro_batch_size (and raise grad_accum to keep the global batch)")
    if cfg.deepspeed.offload_optimizer == "none":
        out.append("offload the optimizer states: deepspeed.offload_optimizer: cpu (slower steps)")
    out.append(f"or shorten data.seq_len; {over / GB:.1f} GB must go")
    return out
