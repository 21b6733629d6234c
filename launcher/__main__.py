"""Worker entry: `python -m launcher train CONFIG [--set k=v ...]`.

Started once per rank by srun (Slurm) or torchrun (`delia train --nproc N`). It reads
the environment into a DistEnv, turns USR1/TERM into a polite stop request, runs the
trainer, and exits with a code the sbatch script acts on: 0 done, 75 preempted
(checkpoint written; requeue me), 74 storage failure (disk full, read-only, no permission,
quota: a requeue would meet the same disk), 1 failed.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import traceback
from pathlib import Path

from .env import DistEnv, EnvError, detect_env
from .netif import choose_gloo_interface
from .signals import StopFlag

EXIT_DONE, EXIT_FAILED, EXIT_STORAGE, EXIT_PREEMPTED = 0, 1, 74, 75  # 74: delia_dist.storage.EXIT_STORAGE
# `delia train` sets this so it can report "preempted" although torchrun turns every
# non-zero worker exit into 1; rank 0 writes its TrainResult there as JSON.
RESULT_FILE_ENV = "DELIA_RESULT_FILE"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m launcher", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="run one training rank")
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--timeout", type=float, default=float(os.environ.get("DELIA_DIST_TIMEOUT", 600)),
                   help="seconds a collective may wait for a peer before the job fails "
                        "(default $DELIA_DIST_TIMEOUT or 600)")
    p.add_argument("--rendezvous-timeout", type=float,
                   default=float(os.environ.get("DELIA_RENDEZVOUS_TIMEOUT", 1800)),
                   help="seconds ranks wait for each other at start-up, apart from --timeout: "
                        "64 ranks importing torch from a shared filesystem start minutes apart "
                        "(default $DELIA_RENDEZVOUS_TIMEOUT or 1800)")
    return parser


def train(args, env: DistEnv, stop: StopFlag) -> int:
    """Run the trainer on this rank and return the exit code; never raises."""
    cfg = None
    try:
        from delia_dist.config import load_config
        from delia_dist.train.trainer import run_training
        cfg = load_config(args.config, args.overrides, check_paths=True)
        result = run_training(cfg, env, stop_requested=stop.is_set, timeout_s=args.timeout,
                              rendezvous_timeout_s=args.rendezvous_timeout)
    except Exception as e:
        from delia_dist.storage import StorageError
        run_dir = getattr(cfg, "run_dir", None)
        report_failure(e, env, Path(run_dir) if run_dir else None)
        return EXIT_STORAGE if isinstance(e, StorageError) else EXIT_FAILED
    code = EXIT_PREEMPTED if result.status == "preempted" else EXIT_DONE
    if env.is_main:
        print(f"[delia] training {result.status} at step {result.step}; checkpoint {result.checkpoint}; "
              f"mlflow run {result.run_id}", flush=True)
        if os.environ.get(RESULT_FILE_ENV):
            from delia_dist import atomic
            atomic.write_text(os.environ[RESULT_FILE_ENV], json.dumps(
                {"status": result.status, "step": result.step, "checkpoint": result.checkpoint,
                 "run_id": result.run_id, "exit_code": code}))
    return code


def report_failure(e: Exception, env: DistEnv, run_dir: Path | None) -> None:
    """One line for an error that names its cause (ConfigError, UserError, DataError), from
    one rank: with 64 ranks the same message 64 times, each with a traceback, buries it.

    The first failing rank claims <run_dir>/failures/<launch>.txt (run_dir is shared by
    every rank: checkpoints go there) and prints; a rank failing later with the same
    message stays quiet, and one failing otherwise (a collective that lost its peer)
    prints one line naming the rank that failed first. Only a named cause repeated verbatim is
    silenced: a timeout seen by every rank is printed by each, because the rank that claimed
    first may sit on the node that died, and its output never reaches the job log. Tracebacks: for errors that do not
    name a cause (bugs) on the first rank, and everywhere with DELIA_DEBUG=1."""
    from delia_dist.config import ConfigError
    from delia_dist.errors import UserError, debug_enabled

    named = isinstance(e, (ConfigError, UserError))
    line = f"error: {e}" if named else f"training failed: {type(e).__name__}: {e}"
    if run_dir is None:  # no shared directory yet; a bad config is the same on every rank
        first, shown = env.rank == 0 or not isinstance(e, ConfigError), line
    else:
        first, shown = _claim_first(env, run_dir, line, quiet_if_same=named)
    if debug_enabled() or first:
        print(f"[rank {env.rank}] {line}", file=sys.stderr, flush=True)
        if debug_enabled() or not named:
            traceback.print_exc()
    elif shown:
        print(f"[rank {env.rank}] {shown}", file=sys.stderr, flush=True)


def _claim_first(env: DistEnv, run_dir: Path, line: str, quiet_if_same: bool = True) -> tuple[bool, str]:
    """(True, line) for the first failing rank of this launch; for a later one, the line it
    should print: empty when it repeats the first rank's message."""
    launch = f"{env.job_id or 'local'}-{env.master_addr}-{env.master_port}-{env.restart_count}"
    claim = run_dir / "failures" / f"{launch}.txt"
    try:
        claim.parent.mkdir(parents=True, exist_ok=True)
        tmp = claim.with_name(f".{launch}.rank{env.rank}")
        tmp.write_text(f"{env.rank}\n{line}\n")
        try:
            os.link(tmp, claim)  # atomic: exactly one rank creates it, with its content
            return True, line
        except FileExistsError:
            rank, _, first_line = claim.read_text().partition("\n")
            if quiet_if_same and first_line.strip() == line.strip():
                return False, ""
            return False, f"{line[:300]} (rank {rank} failed first)"
        finally:
            tmp.unlink(missing_ok=True)
    except OSError:
        return True, line  # no shared run dir to agree on: every rank speaks for itself


def teardown(env: DistEnv, code: int) -> None:
    """Leave the process group in step with the other ranks. A failed rank skips it: its
    peers may be gone, and the barrier inside would only wait for the timeout."""
    if code in (EXIT_FAILED, EXIT_STORAGE):
        return
    try:
        from delia_dist import distributed
        distributed.teardown()
    except Exception as e:  # never turn a finished run into a failure at teardown
        print(f"[rank {env.rank}] teardown: {e}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        env = detect_env()
    except EnvError as e:
        print(f"launcher: {e}", file=sys.stderr, flush=True)
        os._exit(EXIT_FAILED)
    logging.basicConfig(level=logging.INFO if env.is_main else logging.WARNING,
                        format=f"%(asctime)s [rank {env.rank}] %(name)s: %(message)s", stream=sys.stdout)
    # Before any process group: gloo reads GLOO_SOCKET_IFNAME when a group is made.
    gloo = choose_gloo_interface(env.master_addr, env.num_nodes) if env.world_size > 1 else "no gloo group"
    print(f"[rank {env.rank}] {env.launcher}: rank {env.rank}/{env.world_size} local {env.local_rank}/"
          f"{env.local_world_size} on {socket.gethostname()} (node {env.node_rank}/{env.num_nodes}), "
          f"master {env.master_addr}:{env.master_port}, restart {env.restart_count}; {gloo}", flush=True)
    stop = StopFlag.install(rank=env.rank)
    code = train(args, env, stop)
    teardown(env, code)
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit: gloo's background threads crash the interpreter at exit now and then.
    os._exit(code)


if __name__ == "__main__":
    main()
