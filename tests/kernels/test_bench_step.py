"""bench/bench_step.py stays runnable where CI can run it: the tiny size on CPU, every loss
impl through the trainer's loss module, and the same model and data give the same losses
step after step whichever impl computes them."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench/bench_step.py"


def test_tiny_cpu_step_bench_gives_equal_losses_for_every_impl(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("bench_step", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(sys, "argv", [str(BENCH), "--device", "cpu", "--size", "tiny", "--batch", "2", "--seq", "64",
                                      "--steps", "2", "--warmup", "1", "--impls", "fused,chunked,naive"])
    assert mod.main() == 0
    out = capsys.readouterr().out
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")]
                                          for line in out.splitlines() if line.startswith("| ") and "|---" not in line)
            if cells[0] in ("fused", "chunked", "naive")}
    assert set(rows) == {"fused", "chunked", "naive"}, out
    for impl in ("fused", "chunked"):
        for col in (6, 7):  # loss at step 0 and after 2 optimizer steps
            assert abs(float(rows[impl][col]) - float(rows["naive"][col])) < 1e-3, out
    assert float(rows["naive"][7]) < float(rows["naive"][6])  # it trains
