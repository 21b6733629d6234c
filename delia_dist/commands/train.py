"""`delia train`: start training on this machine (torchrun) — the same worker entry
(`python -m launcher train`) that srun runs on a cluster."""
NAME = "train"
HELP = "train a config with N local ranks (DeepSpeed ZeRO-3); Slurm users: sbatch slurm/*.sh"
DESCRIPTION = """Train CONFIG on this machine with --nproc ranks via torchrun.

Resumes from the newest complete checkpoint by default (checkpoint.resume=auto).
Exit codes: 0 done, 75 preempted (checkpoint written), 1 failed, 2 bad config.
Example: delia train configs/tiny_cpu.yaml --nproc 2 --set train.max_steps=20"""


def add_arguments(p):
    p.add_argument("config", help="YAML config, e.g. configs/tiny_cpu.yaml")
    p.add_argument("--nproc", type=int, default=1, help="ranks on this machine (default 1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")
    p.add_argument("--port", type=int, default=None, help="rendezvous port (default: a free one)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds a collective waits for a peer before failing (default 600)")


def run(args) -> int:
    import os
    import socket
    import subprocess
    import sys

    from ..config import load_config
    load_config(args.config, args.overrides, check_paths=True)  # fail here, once, not on every rank
    port = args.port
    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}",
           "--nnodes=1", "--master_addr=127.0.0.1", f"--master_port={port}",
           "-m", "launcher", "train", args.config]
    for o in args.overrides:
        cmd += ["--set", o]
    if args.timeout is not None:
        cmd += ["--timeout", str(args.timeout)]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(cmd, env=env)
    # torchrun reports the first failing worker's code as 1; keep "preempted" visible.
    return proc.returncode
