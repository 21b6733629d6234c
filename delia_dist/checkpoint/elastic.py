"""Resume a checkpoint on a different number of ranks.

Model + optimizer: DeepSpeed's ZeRO-3 shards are cut for the world size that wrote them.
On the first resume at another size, rank 0 converts the step directory once (in a child
interpreter, see _convert) into DeepSpeed's universal format (one fp32 / exp_avg /
exp_avg_sq file per parameter) in <step>/universal, written under a temporary name and
renamed when durable; every other rank waits for the COMPLETE marker on the filesystem
(not in a collective, whose timeout is far shorter than a 70B conversion). The engine then loads it with
load_universal_checkpoint, which re-partitions fp32 master weights and Adam moments for
the new world. Later resumes at any size reuse the cached conversion.

Per-rank state: every old rank's rank_<r>.pt is read; the data stream positions are
re-mapped by delia_dist.data.remap_stream_states (no sample trained twice or skipped);
new rank r takes old rank r % old_world's RNG state (dropout masks then differ from an
uninterrupted run; nothing else depends on it).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from .. import atomic

log = logging.getLogger(__name__)
UNIVERSAL = "universal"
WAIT_ENV = "DELIA_UNIVERSAL_WAIT_S"  # how long non-zero ranks wait for rank 0's conversion


def ensure_universal(path: Path, rank: int, wait_s: float | None = None) -> Path:
    """The universal conversion of step directory `path`, made by rank 0 if not cached."""
    out = path / UNIVERSAL
    failed = path / f".{UNIVERSAL}.FAILED"
    if rank == 0 and not (out / "COMPLETE").is_file():
        failed.unlink(missing_ok=True)
        try:
            _convert(path, out)
        except BaseException as e:
            atomic.write_text(failed, f"{type(e).__name__}: {e}")
            raise
    wait_s = float(os.environ.get(WAIT_ENV, 24 * 3600)) if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    while not (out / "COMPLETE").is_file():
        if failed.is_file():
            raise RuntimeError(f"rank 0 failed to convert {path} for another world size: {failed.read_text()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {wait_s:.0f} s for rank 0 to convert {path} ({WAIT_ENV})")
        time.sleep(1.0)
    return out


def _convert(path: Path, out: Path) -> None:
    """Runs the conversion in a fresh interpreter. DeepSpeed's converter forks its extract
    workers, and rank 0 has by now initialised CUDA and started NCCL's and gloo's threads:
    forking that process risks a child stuck on a lock some thread held at fork time. The
    child also returns the converter's memory (a few 70B optimizer shards of ~13 GB each
    at once) to the node when it exits."""
    t0 = time.perf_counter()
    log.info("converting %s to DeepSpeed's universal format for a new world size (once)", path)
    # The converter's own progress lines go to this rank's log, as they would in-process.
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "delia_dist.checkpoint.elastic", str(path), str(out)], env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"DeepSpeed's universal conversion of {path} failed with exit code "
                           f"{proc.returncode} (its output is above in rank 0's log)")
    log.info("universal conversion of %s done in %.1f s", path.name, time.perf_counter() - t0)


def _convert_here(path: Path, out: Path) -> None:
    from deepspeed.checkpoint import ds_to_universal

    tmp = path / f".{UNIVERSAL}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    # Each extract worker holds one rank's optimizer file (70B on 64 ranks: ~13 GB), so few.
    workers = max(1, min(4, (os.cpu_count() or 1) // 2))
    args = argparse.Namespace(input_folder=str(path), output_folder=str(tmp), num_extract_workers=workers,
                              num_merge_workers=max(1, workers // 2), keep_temp_folder=False, strict=True,
                              inject_missing_state=False)
    ds_to_universal.main(args)
    (path / "latest_universal").unlink(missing_ok=True)  # written by main(); we name the tag ourselves
    (tmp / "COMPLETE").write_text(path.name)
    atomic.fsync_tree(tmp)
    if out.exists():  # a stale, incomplete conversion
        shutil.rmtree(out)
    atomic.replace(tmp, out)


def load_universal(engine, path: Path, load_optimizer: bool) -> None:
    """Load <path>/universal into a live engine of any world size."""
    cfg = engine._config  # DeepSpeed reads this flag only while loading
    before = cfg.load_universal_checkpoint
    cfg.load_universal_checkpoint = True
    try:
        load_path, _ = engine.load_checkpoint(str(path), tag=UNIVERSAL, load_optimizer_states=load_optimizer,
                                              load_lr_scheduler_states=False)
    finally:
        cfg.load_universal_checkpoint = before
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the universal checkpoint {path / UNIVERSAL}")


def remapped_rank_state(path: Path, old_world: int, rank: int, new_world: int) -> dict:
    """This rank's state at the new world size from every old rank's rank_<r>.pt."""
    from ..data import remap_stream_states

    old = [torch.load(path / f"rank_{r}.pt", weights_only=True) for r in range(old_world)]
    streams = remap_stream_states([s["stream"] for s in old], new_world)
    if len(streams) != new_world:
        raise RuntimeError(f"remap_stream_states returned {len(streams)} states for {new_world} ranks")
    return {**old[rank % old_world], "stream": streams[rank]}


def check_resume_compatible(given, saved) -> None:
    """A stream position means nothing under other sources or another sequence length, so a
    resume with either changed stops here with one line naming the difference (other
    settings are taken from the checkpoint with a warning, see trainer._resume_config)."""
    from ..config import ConfigError
    diffs = []
    now, then = [s.name for s in given.data.sources], [s.name for s in saved.data.sources]
    if now != then:
        diffs.append(f"data.sources: checkpoint {then}, config {now}")
    if given.data.seq_len != saved.data.seq_len:
        diffs.append(f"data.seq_len: checkpoint {saved.data.seq_len}, config {given.data.seq_len}")
    if diffs:
        raise ConfigError("cannot resume this run with a different data layout: " + "; ".join(diffs)
                          + " (use a new run_dir, or checkpoint.resume=none)", key="checkpoint.resume")


def budget_tokens_per_step(cfg, world: int) -> int:
    """Token-budget units one optimizer step consumes (what trainer.max_steps_for divides by)."""
    return cfg.data.seq_len * cfg.train.micro_batch_size * cfg.train.grad_accum * world


def steps_after_resume(cfg, world: int, counters: dict, schedule, total_steps: int,
                       saved_world: int | None) -> int:
    """The resumed run's number of steps. Under data.token_budget it is the steps done plus
    the budget left at this world size's tokens per step (a plain recount would train a
    shrunk job past its budget), and the lr schedule is stretched from where it stood."""
    if cfg.train.max_steps is not None or cfg.data.token_budget is None:
        schedule.anchor, schedule.max_steps = None, max(1, total_steps)
        return total_steps
    if "budget_tokens" not in counters:  # written before this counter existed: one world size
        counters["budget_tokens"] = counters["step"] * budget_tokens_per_step(cfg, saved_world or world)
    left = max(0, cfg.data.token_budget - counters["budget_tokens"])
    total = counters["step"] + left // budget_tokens_per_step(cfg, world)  # floor, as max_steps_for
    schedule.max_steps = int(getattr(schedule, "saved_max_steps", None) or schedule.max_steps)
    if total != schedule.max_steps:
        schedule.resize(total)
    return total


if __name__ == "__main__":  # the child _convert starts: python -m delia_dist.checkpoint.elastic STEP_DIR OUT
    _convert_here(Path(sys.argv[1]), Path(sys.argv[2]))
