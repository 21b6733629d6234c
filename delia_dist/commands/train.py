"""`delia train`: start training on this machine (torchrun) — the same worker entry
(`python -m launcher train`) that srun runs on a cluster."""
NAME = "train"
HELP = "train a config with N local ranks (DeepSpeed ZeRO-3); Slurm users: sbatch slurm/*.sh"
DESCRIPTION = """Train CONFIG on this machine with --nproc ranks via torchrun.

Resumes from the newest complete checkpoint by default (checkpoint.resume=auto).
Exit codes: 0 done, 75 preempted (checkpoint written), 74 storage failure (disk full,
read-only, no permission, quota: the line above names the directory), 1 failed, 2 bad config.
USR1 or TERM to this process asks every rank to checkpoint at the next step and stop (75).
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
    import json
    import os
    import signal
    import socket
    import subprocess
    import sys
    import tempfile

    from launcher.__main__ import EXIT_PREEMPTED, RESULT_FILE_ENV

    from ..config import load_config
    load_config(args.config, args.overrides, check_paths=True)  # fail here, once, not on every rank
    port = args.port
    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "launcher.torchrun", f"--nproc_per_node={args.nproc}",
           "--nnodes=1", "--master_addr=127.0.0.1", f"--master_port={port}",
           "-m", "launcher", "train", args.config]
    for o in args.overrides:
        cmd += ["--set", o]
    if args.timeout is not None:
        cmd += ["--timeout", str(args.timeout)]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="delia-train-") as tmp:
        result_file = os.path.join(tmp, "result.json")
        env[RESULT_FILE_ENV] = result_file
        proc = subprocess.Popen(cmd, env=env)
        forward = _forward_to_workers(proc.pid)
        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGUSR1, signal.SIGTERM)}
        try:
            code = proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        # torchrun turns every non-zero worker exit into 1; rank 0's result says what happened.
        if code != 0 and os.path.isfile(result_file):
            with open(result_file) as f:
                if json.load(f)["status"] == "preempted":
                    return EXIT_PREEMPTED
        return code


def _forward_to_workers(torchrun_pid: int):
    """USR1/TERM to `delia train` become USR1 to every rank (torchrun itself would die of
    USR1 and kill its workers on TERM), so the ranks checkpoint and exit 75 as under Slurm."""
    import os
    import signal

    import psutil

    def handler(signum, frame):
        try:
            workers = psutil.Process(torchrun_pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for w in workers:
            try:
                if "launcher" in w.cmdline():
                    os.kill(w.pid, signal.SIGUSR1)
            except (psutil.NoSuchProcess, ProcessLookupError):
                continue
    return handler
