"""Worker entry: `python -m launcher train CONFIG [--set k=v ...]`.

Started once per rank by srun (Slurm) or torchrun (`delia train --nproc N`). It reads
the environment into a DistEnv, turns USR1/TERM into a polite stop request, runs the
trainer, and exits with a code the sbatch script acts on: 0 done, 75 preempted
(checkpoint written; requeue me), 1 failed.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from .env import detect_env
from .signals import StopFlag

EXIT_DONE, EXIT_FAILED, EXIT_PREEMPTED = 0, 1, 75


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="run one training rank")
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--timeout", type=float, default=float(os.environ.get("DELIA_DIST_TIMEOUT", 600)),
                   help="seconds a collective may wait for a peer before the job fails (default 600)")
    args = parser.parse_args(argv)

    env = detect_env()
    logging.basicConfig(level=logging.INFO if env.is_main else logging.WARNING,
                        format=f"%(asctime)s [rank {env.rank}] %(name)s: %(message)s", stream=sys.stdout)
    stop = StopFlag.install()
    code = EXIT_FAILED
    try:
        from delia_dist.config import load_config
        from delia_dist.trainer import run_training
        cfg = load_config(args.config, args.overrides, check_paths=True)
        result = run_training(cfg, env, stop_requested=stop.is_set, timeout_s=args.timeout)
        code = EXIT_PREEMPTED if result.status == "preempted" else EXIT_DONE
        if env.is_main:
            print(f"[delia] training {result.status} at step {result.step}; checkpoint {result.checkpoint}; "
                  f"mlflow run {result.run_id}", flush=True)
    except Exception as e:  # one line for users, the traceback for whoever debugs it
        from delia_dist.config import ConfigError
        if isinstance(e, ConfigError):
            print(f"[rank {env.rank}] error: {e}", file=sys.stderr, flush=True)
        else:
            print(f"[rank {env.rank}] training failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            traceback.print_exc()
        code = EXIT_FAILED
    finally:
        if code != EXIT_FAILED:
            try:
                from delia_dist import distributed
                distributed.teardown()
            except Exception as e:  # never turn a finished run into a failure at teardown
                print(f"[rank {env.rank}] teardown: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        sys.stderr.flush()
        # os._exit: gloo's background threads crash the interpreter at exit now and then.
        os._exit(code)


if __name__ == "__main__":
    main()
