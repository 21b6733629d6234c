"""Training steps while the MLflow server is up, then killed, then back; and what arrived.

A step is fixed CPU work (matrix products) followed by log_metrics of a trainer-sized
record (and a tag every 50 steps, as a checkpoint would). Phases:
  no-tracking   `--steps` steps, tracking disabled (the floor)
  server-up     `--steps` steps with a real `mlflow server` on loopback
  server-down   `--down-steps` steps after the server was killed with SIGKILL; long
                enough by default (40k values) to pass the old in-memory queue (20k)
then the server is started again on the same store and the tracker flushed. Prints ms
per step per phase and down/up; exits 1 if any value is missing or stored twice.

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
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from delia_dist.config import TrackingConfig  # noqa: E402
from delia_dist.tracking import Tracker  # noqa: E402

SOURCES = ["diverse", "downstream", "task_a", "task_b"]


def start_server(root: Path, port: int) -> subprocess.Popen:
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen([str(mlflow), "server", "--backend-store-uri", f"sqlite:///{root}/server.db",
                             "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=open(root / "server.log", "a"), stderr=subprocess.STDOUT,
                            env={**os.environ, "MLFLOW_ENABLE_TELEMETRY": "false"}, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")


def record(step: int) -> dict:
    r = {"loss": 1.0 / step, "lr": 1e-4, "grad_norm": 0.5 + step % 7, "tokens_per_s": 1000.0 + step}
    for s in SOURCES:
        r |= {f"loss/{s}": 2.0 / step, f"tokens/{s}": 100.0 * step, f"share/{s}": 0.25}
    return r


def run_steps(tracker: Tracker, first: int, n: int, work: torch.Tensor) -> float:
    t0 = time.perf_counter()
    for step in range(first, first + n):
        for _ in range(4):
            work @ work
        tracker.log_metrics(record(step), step)
        if step % 50 == 0:
            tracker.set_tags({"last_checkpoint": f"/ckpt/step_{step}"})
    return time.perf_counter() - t0


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

    off = Tracker(TrackingConfig(enabled=False), root / "off", enabled=False)
    run_steps(off, 1, 20, work)  # warm-up
    t_off = run_steps(off, 1, args.steps, work)
    tracker = Tracker(TrackingConfig(uri=uri, experiment="bench"), root / "run", enabled=True)
    tracker.start({"bench": "tracking"}, wait_s=60)
    t_up = run_steps(tracker, 1, args.steps, work)
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()
    t_down = run_steps(tracker, args.steps + 1, args.down_steps, work)
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
    off, up, down = (1000 * t / k for t, k in ((t_off, args.steps), (t_up, args.steps), (t_down, args.down_steps)))
    print(f"{len(record(1))} metrics per step, step work {args.size}^3 x 4")
    print(f"no-tracking  {args.steps:5d} steps {t_off:7.2f} s  {off:6.2f} ms/step")
    print(f"server-up    {args.steps:5d} steps {t_up:7.2f} s  {up:6.2f} ms/step")
    print(f"server-down  {args.down_steps:5d} steps {t_down:7.2f} s  {down:6.2f} ms/step")
    print(f"per step: down/up {down / up:.2f}x  down/no-tracking {down / off:.2f}x  up/no-tracking {up / off:.2f}x; "
          f"flush after restart {t_flush:.1f} s "
          f"({'all delivered' if delivered else 'NOT delivered'})")
    print("stored: " + ("every value exactly once" if not bad else "; ".join(bad)))
    return 0 if delivered and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
