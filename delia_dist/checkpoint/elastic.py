"""Resume a checkpoint on a different number of ranks.

Model + optimizer: DeepSpeed's ZeRO-3 shards are cut for the world size that wrote them.
On the first resume at another size, rank 0 converts the step directory once (in a child
interpreter, see _convert) into DeepSpeed's universal format (one fp32 / exp_avg /
exp_avg_sq file per parameter) in <step>/universal, written under a temporary name and
renamed when durable; every other rank waits for the COMPLETE marker on the filesystem
(not in a collective, whose timeout is far shorter than a 70B conversion). The engine then loads it with
load_universal_checkpoint, which re-partitions fp32 master weights and Adam moments for
the new world. Later resumes at any size reuse the cached conversion.

Each rank reads only its own partition of every universal file (universal_slices.py), not
the whole copy that DeepSpeed's loader reads on every rank.

Per-rank state: rank 0 reads every old rank's rank_<r>.pt once, re-maps the data stream
positions with delia_dist.data.remap_stream_states (no sample trained twice or skipped) and
writes one file per new rank; each rank reads its own. New rank r takes old rank
r % old_world's RNG state (dropout masks then differ from an uninterrupted run; nothing
else depends on it).
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

from .. import atomic, storage

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
            try:
                atomic.write_text(failed, f"{type(e).__name__}: {e}")
            except OSError:  # the disk that failed the conversion; the other ranks wait for WAIT_ENV
                log.error("cannot leave %s for the other ranks", failed)
            raise
    _wait_for(out, failed, f"convert {path} for another world size", wait_s)
    return out


def _wait_for(out: Path, failed: Path, what: str, wait_s: float | None = None) -> None:
    """Wait on the filesystem for rank 0's <out>/COMPLETE (or its FAILED marker)."""
    wait_s = float(os.environ.get(WAIT_ENV, 24 * 3600)) if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    while not (out / "COMPLETE").is_file():
        if failed.is_file():
            raise RuntimeError(f"rank 0 failed to {what}: {failed.read_text()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {wait_s:.0f} s for rank 0 to {what} ({WAIT_ENV})")
        time.sleep(0.2)


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
    # A storage failure comes back as the child's one line, through a pipe: the disk may be full.
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.run([sys.executable, "-m", "delia_dist.checkpoint.elastic", str(path), str(out),
                               str(write_end)], env=env, pass_fds=(write_end,))
    finally:
        os.close(write_end)
    with os.fdopen(read_end) as f:
        line = f.read().strip()
    if line:
        raise storage.StorageError(line)
    if proc.returncode != 0:
        raise RuntimeError(f"DeepSpeed's universal conversion of {path} failed with exit code "
                           f"{proc.returncode} (its output is above in rank 0's log)")
    log.info("universal conversion of %s done in %.1f s", path.name, time.perf_counter() - t0)


def _convert_here(path: Path, out: Path) -> None:
    from deepspeed.checkpoint import ds_to_universal

    tmp = path / f".{UNIVERSAL}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    # The universal copy holds the fp32 master weights and Adam moments: what the optimizer shards hold.
    need = sum(p.stat().st_size for p in path.glob("*optim_states.pt"))
    what = f"the universal conversion of {path.name}"
    # Each extract worker holds one rank's optimizer file (70B on 64 ranks: ~13 GB), so few.
    workers = max(1, min(4, (os.cpu_count() or 1) // 2))
    args = argparse.Namespace(input_folder=str(path), output_folder=str(tmp), num_extract_workers=workers,
                              num_merge_workers=max(1, workers // 2), keep_temp_folder=False, strict=True,
                              inject_missing_state=False)
    with storage.writing(what, path, need):
        storage.require_free(what, path, need, note="needed once to resume at another world size")
        try:
            ds_to_universal.main(args)
            (path / "latest_universal").unlink(missing_ok=True)  # written by main(); we name the tag ourselves
            atomic.write_text(tmp / "COMPLETE", path.name)
            atomic.fsync_tree(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a partial copy would only hold the space
            raise
    if out.exists():  # a stale, incomplete conversion
        shutil.rmtree(out)
    atomic.replace(tmp, out)


def load_universal(engine, path: Path, load_optimizer: bool) -> None:
    """Load <path>/universal into a live engine of any world size, each rank reading only its
    own partition of every file (universal_slices); rank 0 logs what each rank read."""
    from .. import distributed
    from .universal_slices import sliced_reads

    cfg = engine._config  # DeepSpeed reads this flag only while loading
    before = cfg.load_universal_checkpoint
    cfg.load_universal_checkpoint = True
    try:
        with sliced_reads(engine.optimizer) as reads:
            load_path, _ = engine.load_checkpoint(str(path), tag=UNIVERSAL, load_optimizer_states=load_optimizer,
                                                  load_lr_scheduler_states=False)
    finally:
        cfg.load_universal_checkpoint = before
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the universal checkpoint {path / UNIVERSAL}")
    counts = distributed.all_gather_object((reads.bytes_read, reads.bytes_whole, reads.files))
    if distributed.rank() == 0:
        whole = max(c[1] for c in counts)
        log.info("universal load: each rank read its own partition of %d files; bytes read per rank %s of %d "
                 "(%s of the whole)", max(c[2] for c in counts), [c[0] for c in counts], whole,
                 ", ".join(f"{c[0] / max(whole, 1):.2f}" for c in counts))


def remapped_rank_state(path: Path, old_world: int, rank: int, new_world: int) -> dict:
    """This rank's state at the new world size. Rank 0 reads every old rank's rank_<r>.pt,
    re-maps the data streams once and writes one file per new rank under
    <path>/universal/rank_states_<new_world> (cached for later resumes at that size); each
    rank then reads only its own file. Every rank re-mapping everything was 64 reads of
    ~16 MB and ~51 M Python tuples per rank at 70B."""
    out = path / UNIVERSAL / f"rank_states_{new_world}"
    failed = path / UNIVERSAL / f".rank_states_{new_world}.FAILED"
    if rank == 0 and not (out / "COMPLETE").is_file():
        failed.unlink(missing_ok=True)
        try:
            _write_remapped(path, old_world, new_world, out)
        except BaseException as e:
            atomic.write_text(failed, f"{type(e).__name__}: {e}")
            raise
    _wait_for(out, failed, f"re-map the data states of {path} for {new_world} ranks")
    return torch.load(out / f"rank_{rank}.pt", weights_only=True)


def _write_remapped(path: Path, old_world: int, new_world: int, out: Path) -> None:
    from ..data import remap_stream_states

    old = [torch.load(path / f"rank_{r}.pt", weights_only=True) for r in range(old_world)]
    streams = remap_stream_states([s["stream"] for s in old], new_world)
    if len(streams) != new_world:
        raise RuntimeError(f"remap_stream_states returned {len(streams)} states for {new_world} ranks")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with storage.writing(f"the re-mapped data states of {path.name}", out.parent):
        tmp.mkdir(parents=True)
        for r in range(new_world):
            # New rank r takes old rank r % old_world's RNG state (see the module docstring).
            torch.save({**old[r % old_world], "stream": streams[r]}, tmp / f"rank_{r}.pt")
        (tmp / "COMPLETE").write_text(str(new_world))
        atomic.fsync_tree(tmp)
    if out.exists():  # a stale, incomplete one
        shutil.rmtree(out)
    atomic.replace(tmp, out)


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


if __name__ == "__main__":  # the child _convert starts: python -m delia_dist.checkpoint.elastic STEP_DIR OUT FD
    try:
        _convert_here(Path(sys.argv[1]), Path(sys.argv[2]))
    except storage.StorageError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        os.write(int(sys.argv[3]), str(e).encode())
        sys.exit(storage.EXIT_STORAGE)
