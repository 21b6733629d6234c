"""bench/bench_vs_trainer.py stays runnable where CI can run it: 2 timed steps a side on the
tiny model, 2 ranks. Both sides train the same packed rows (equal token counts), the
Trainer side ran a ZeRO-3 DeepSpeed engine on both ranks, and each side's phase profile
covers its forward, backward and optimizer step."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_quick_bench_runs_both_sides_on_identical_work(tmp_path):
    out = tmp_path / "runs.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(REPO / "bench/bench_vs_trainer.py"), "--model", "tiny", "--quick",
                           "--workdir", str(tmp_path), "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = {r["side"]: r for r in json.loads(out.read_text())}
    assert set(runs) == {"ours", "trainer"}
    ours, hf = runs["ours"], runs["trainer"]
    assert ours["tokens"] == hf["tokens"] > 0  # the same rows on both sides
    assert hf["zero3_engine"] is True
    assert math.isfinite(hf["train_loss"])
    for r in (ours, hf):
        assert r["steps"] == 3 and r["timed_steps"] == 2
        assert {"forward", "backward", "optimizer", "collectives"} <= set(r["profile"]["median_s"])
        assert r["peak_rss_mb"] > 0
    assert "loss" in ours["profile"]["median_s"]
    assert "ratio ours/trainer:" in proc.stdout
