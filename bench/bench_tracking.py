"""Training steps while the MLflow server is up, then killed, then back; and what arrived.

A step is fixed CPU work (matrix products) followed by log_metrics of a trainer-sized
record (and a tag every 50 steps, as a checkpoint would). Phases:
  server-up     `--steps` steps with a real `mlflow server` on loopback
  server-down   `--down-steps` steps after the server was killed with SIGKILL; long
                enough by default (40k values) to pass the old in-memory queue (20k)
then the server is started again on the same store and the tracker flushed. Within each
phase, blocks of 50 logged steps alternate with 50 steps of the same work that log
nothing, so each phase's cost of tracking is measured under the same machine load (a
shared machine's load swings more than the effect). Prints ms per step; exits 1 if any
value is missing or stored twice.

  .venv/bin/python bench/bench_tracking.py
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from delia_dist.config import TrackingConfig  # noqa: E402
from delia_dist.health import ServerNotReady, wait_healthy  # noqa: E402
from delia_dist.tracking import Tracker  # noqa: E402

SOURCES = ["diverse", "downstream", "task_a", "task_b"]


def start_server(root: Path, port: int) -> subprocess.Popen:
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen([str(mlflow), "server", "--backend-store-uri", f"sqlite:///{root}/server.db",
                             "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=open(root / "server.log", "a"), stderr=subprocess.STDOUT,
                            env={**os.environ, "MLFLOW_ENABLE_TELEMETRY": "false"}, start_new_session=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", 120, alive=lambda: proc.poll() is None,
                     log=root / "server.log")
    except ServerNotReady as e:
        raise SystemExit(str(e)) from None
    return proc


def record(step: int) -> dict:
    r = {"loss": 1.0 / step, "lr": 1e-4, "grad_norm": 0.5 + step % 7, "tokens_per_s": 1000.0 + step}
    for s in SOURCES:
        r |= {f"loss/{s}": 2.0 / step, f"tokens/{s}": 100.0 * step, f"share/{s}": 0.25}
    return r


def run_steps(tracker: Tracker, first: int, n: int, work: torch.Tensor, block: int = 50) -> tuple[float, float]:
    """(ms per logged step, ms per unlogged step), alternating blocks of each."""
    logged = unlogged = 0.0
    for start in range(first, first + n, block):
        t0 = time.perf_counter()
        for step in range(start, min(start + block, first + n)):
            for _ in range(4):
                work @ work
            tracker.log_metrics(record(step), step)
            if step % 50 == 0:
                tracker.set_tags({"last_checkpoint": f"/ckpt/step_{step}"})
        t1 = time.perf_counter()
        for _ in range(start, min(start + block, first + n)):
            for _ in range(4):
                work @ work
        logged, unlogged = logged + t1 - t0, unlogged + time.perf_counter() - t1
    return 1000 * logged / n, 1000 * unlogged / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--down-steps", type=int, default=2500)
    ap.add_argument("--size", type=int, default=384, help="matrix size of the per-step work")
    args = ap.parse_args()
    torch.manual_seed(0)
    work = torch.randn(args.size, args.size)
    root = Path(tempfile.mkdtemp(prefix="bench-tracking-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = start_server(root, port)
    uri = f"http://127.0.0.1:{port}"

    run_steps(Tracker(TrackingConfig(enabled=False), root / "off", enabled=False), 1, 50, work)  # warm-up
    tracker = Tracker(TrackingConfig(uri=uri, experiment="bench"), root / "run", enabled=True)
    tracker.start({"bench": "tracking"}, wait_s=60)
    up, up_off = run_steps(tracker, 1, args.steps, work)
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()
    down, down_off = run_steps(tracker, args.steps + 1, args.down_steps, work)
    server = start_server(root, port)
    t0 = time.perf_counter()
    delivered = tracker.flush(300)
    t_flush = time.perf_counter() - t0
    tracker.close()
    from mlflow.tracking import MlflowClient
    client = MlflowClient(uri)
    n = args.steps + args.down_steps
    bad = []
    for key in record(1):
        steps = [m.step for m in client.get_metric_history(tracker.run_id, key)]
        if sorted(steps) != list(range(1, n + 1)):
            bad.append(f"{key}: {len(steps)} values, {len(set(steps))} distinct steps, want {n}")
    os.killpg(server.pid, signal.SIGKILL)
    print(f"{len(record(1))} metrics per step, step work {args.size}^3 x 4; ms per step, logged / same work unlogged")
    print(f"server-up    {args.steps:5d} steps  {up:6.2f} / {up_off:6.2f}  = {up / up_off:.2f}x")
    print(f"server-down  {args.down_steps:5d} steps  {down:6.2f} / {down_off:6.2f}  = {down / down_off:.2f}x")
    print(f"logged steps, down/up: {down / up:.2f}x raw, {(down / down_off) / (up / up_off):.2f}x load-corrected; "
          f"flush after restart {t_flush:.1f} s "
          f"({'all delivered' if delivered else 'NOT delivered'})")
    print("stored: " + ("every value exactly once" if not bad else "; ".join(bad)))
    return 0 if delivered and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
