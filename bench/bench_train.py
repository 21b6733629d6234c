"""Training throughput and peak memory per rank: the tiny model, 2 ZeRO-3 ranks on CPU,
with the chunked fused loss and the naive full-logits loss side by side in one run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_train.py [--steps 100]

Steps/s counts only the training loop (summary.json of each run); peak RSS is the largest
resident set of any rank. Absolute CPU times mean little; the ratio is the result.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(ws: Path, name: str, steps: int, *overrides: str) -> dict:
    cmd = [sys.executable, "-m", "delia_dist.cli", "train", str(REPO / "configs/tiny_cpu.yaml"), "--nproc", "2",
           "--set", f"run_dir={ws / name}", "--set", f"train.max_steps={steps}", "--set", "eval.every_steps=null",
           "--set", f"checkpoint.every_steps={steps}", "--set", "tracking.enabled=false"]
    for o in overrides:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, cwd=ws, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        sys.exit(f"training {name} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads((ws / name / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seq-len", type=int, default=256)
    args = ap.parse_args()
    from delia_dist.data.synth import prepare_workspace
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        prepare_workspace(ws / "runs/tiny", n_train=200, n_eval=4, n_diverse=3000)
        rows = {impl: run(ws, impl, args.steps, f"loss.impl={impl}", f"data.seq_len={args.seq_len}")
                for impl in ("chunked", "naive")}
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} cores; tiny Llama (hidden 128, 2 layers), 2 ranks ZeRO-3 fp32, "
          f"micro-batch 4 x seq {args.seq_len}, {args.steps} steps")
    print("| loss impl | steps/s | tokens/s (both ranks) | peak RSS per rank (MiB) |")
    print("|---|---|---|---|")
    for impl, r in rows.items():
        print(f"| {impl} | {r['steps_per_s']:.2f} | {r['tokens'] / r['train_wall_s']:.0f} | "
              f"{r['peak_rss_mb_max_rank']:.0f} |")
    c, n = rows["chunked"], rows["naive"]
    print(f"ratio chunked/naive: steps/s {c['steps_per_s'] / n['steps_per_s']:.2f}x, "
          f"peak RSS {c['peak_rss_mb_max_rank'] / n['peak_rss_mb_max_rank']:.2f}x")


if __name__ == "__main__":
    main()
