"""What a checkpoint costs: bytes on disk, and seconds at the filesystem's bandwidth for a
save, a load and the model load at start, against the collective timeout and the step time.

A save is every rank writing its shards at once, so its time is the step directory's bytes
over the filesystem's aggregate bandwidth (checkpoint.fs_bandwidth_gbps), not over one
node's link. Collectives inside a save or load wait IO_MARGIN times that estimate (the
filesystem is shared with other jobs and fsync has a tail), never less than the job's
collective timeout: the trainer and `delia plan` both take the bound from io_bound_s.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .shape import Architecture

GB = 1e9
IO_MARGIN = 3.0
# The launcher's collective timeout when DELIA_DIST_TIMEOUT is unset (launcher/__main__.py).
DEFAULT_DIST_TIMEOUT_S = 600.0
# Checkpointing should cost at most this fraction of training time.
COST_TARGET = 0.02


def model_state_bytes(params: int, trainable: int, mixed: bool) -> int:
    """ZeRO-3's model + optimizer shards summed over ranks: weights (2 B/param in bf16) and
    the fp32 master + Adam m, v (12 B per trainable param; fp32 training: 4 + 8)."""
    return params * (2 if mixed else 4) + trainable * (12 if mixed else 8)


def universal_bytes(trainable: int) -> int:
    """DeepSpeed's universal copy for a resume on another world size: fp32 master + Adam m, v."""
    return trainable * 12


def io_bytes(params: int, trainable: int, mixed: bool) -> int:
    """The most one save or load moves: a load on another world size reads the step dir,
    writes the universal copy and reads it back."""
    return model_state_bytes(params, trainable, mixed) + 2 * universal_bytes(trainable)


def io_seconds(nbytes: float, bandwidth_gbps: float) -> float:
    return nbytes / (bandwidth_gbps * GB)


def io_bound_s(nbytes: float, bandwidth_gbps: float, floor_s: float = 0.0) -> float:
    """How long a collective may wait while `nbytes` move through the filesystem."""
    return max(floor_s, IO_MARGIN * io_seconds(nbytes, bandwidth_gbps))


@dataclass
class CheckpointTimes:
    bandwidth_gbps: float
    save_s: float          # the whole step directory written by all ranks at once
    load_s: float          # the same read back at the same world size
    elastic_load_s: float  # another world size: the universal copy written once, then read in slices
    model_load_s: float    # the weights read at start (from_pretrained)
    timeout_s: float       # the job's collective timeout (DELIA_DIST_TIMEOUT)
    bound_s: float         # what collectives wait during a save or load
    step_s: float
    every_steps: int
    cost: float            # fraction of training time spent saving

    def every_steps_for(self, target: float = COST_TARGET) -> int:
        return math.ceil(self.save_s / (target * self.step_s)) if self.step_s > 0 else self.every_steps


def times(n: int, trainable: int, mixed: bool, data_states: float, cfg, step_s: float,
          timeout_s: float) -> CheckpointTimes:
    """`data_states`: the data-stream state bytes of all ranks, written beside the shards."""
    bw = cfg.checkpoint.fs_bandwidth_gbps
    step_dir = model_state_bytes(n, trainable, mixed) + data_states
    save_s = io_seconds(step_dir, bw)
    every = cfg.checkpoint.every_steps
    return CheckpointTimes(bandwidth_gbps=bw, save_s=save_s, load_s=save_s,
                           elastic_load_s=io_seconds(step_dir + 2 * universal_bytes(trainable), bw),
                           model_load_s=io_seconds(n * (2 if mixed else 4), bw), timeout_s=timeout_s,
                           bound_s=io_bound_s(io_bytes(n, trainable, mixed) + data_states, bw, timeout_s),
                           step_s=step_s, every_steps=every,
                           cost=save_s / (every * step_s) if step_s > 0 else 0.0)


def storage(arch: Architecture, cfg, world: int, gpus_per_node: int, n: int, trainable: int,
            mixed: bool) -> dict[str, float]:
    """Bytes a checkpoint writes, the data state inside it, an elastic resume's extra copy
    and the streaming export's peak memory: what decides disk quota, save time and which
    node can export."""
    from ..checkpoint.export import export_peak_bytes

    model_states = model_state_bytes(n, trainable, mixed)
    data_state = data_state_bytes(cfg)
    largest = max(arch.embedding_params(), arch.hidden * arch.intermediate)
    lora = 0
    if cfg.model.finetune == "lora":
        lora = max(arch.hidden * arch.heads * arch.head_dim, arch.hidden * arch.intermediate)
        if "embed_tokens" in cfg.model.lora.target_modules:  # its merge makes a [vocab, hidden] product
            lora = max(lora, arch.embedding_params())
    out_bytes = 2 if (cfg.model.dtype in ("bfloat16", "float16") or mixed) else 4
    return {
        "checkpoint: model + optimizer states, per rank": model_states / world,
        f"checkpoint: per node ({gpus_per_node} ranks)": model_states / world * gpus_per_node,
        "checkpoint: data-stream state, per rank": data_state,
        f"checkpoint: whole step dir ({world} ranks)": model_states + data_state * world,
        # A save first removes what retention would (delia_dist/checkpoint/room.py) but keeps
        # the newest until the new one is complete: keep_last step dirs at once, at least 2.
        f"checkpoint dir at its fullest (keep_last={cfg.checkpoint.keep_last}, during a save)":
            (model_states + data_state * world) * max(cfg.checkpoint.keep_last, 2),
        "elastic resume: universal copy (once, on disk)": universal_bytes(trainable),
        **elastic_resume_reads(trainable, data_state, world),
        "export: peak memory of the streaming writer": export_peak_bytes(largest, out_bytes, lora),
        "export: HF safetensors on disk": n * out_bytes,
    }


def data_state_bytes(cfg) -> int:
    """One rank's data-stream state in a checkpoint (shuffle buffers by reference)."""
    from ..data import stream_state_bytes
    d = cfg.data
    return stream_state_bytes(d.shuffle_buffer, d.num_workers, d.seq_len, n_sources=len(d.sources))


def checkpoint_bytes(cfg, world: int) -> int:
    """One checkpoint's bytes on disk over all ranks (the "whole step dir" line of the plan):
    the room the trainer asks for before its first save."""
    from .shape import trainable_params, trained_architecture
    arch = trained_architecture(cfg.model)
    n = arch.total_params()
    mixed = cfg.train.precision in ("bf16", "fp16")
    return model_state_bytes(n, trainable_params(arch, cfg.model), mixed) + data_state_bytes(cfg) * world


def elastic_resume_reads(trainable: int, data_state: float, world: int) -> dict[str, float]:
    """Bytes an elastic resume onto `world` ranks reads, counted for an old job of the same
    size: each rank its own 1/world partition of the universal copy (fp32 master + Adam m, v,
    12 B per trainable parameter; checkpoint/universal_slices.py) and its own re-mapped data
    state; rank 0 reads every old rank's data state once to re-deal the epoch
    (checkpoint/elastic.remapped_rank_state). DeepSpeed's own loader read the whole copy on
    every rank: world x 12 B per trainable parameter from the filesystem."""
    universal = universal_bytes(trainable)
    return {
        f"elastic resume: universal copy each rank reads (1/{world})": universal / world,
        f"elastic resume: old data states rank 0 re-maps once ({world} files)": data_state * world,
        f"elastic resume: read from the filesystem, all {world} ranks": universal + 2 * data_state * world,
    }
