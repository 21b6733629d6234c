"""bench/bench_linear_ce.py stays runnable: one tiny CPU run prints naive and ours side by
side with ratios, and ours holds less memory than naive. In-process (importing torch again
in a subprocess costs more than the run)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench/bench_linear_ce.py"


def run(monkeypatch, capsys, *args: str):
    spec = importlib.util.spec_from_file_location("bench_linear_ce", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(sys, "argv", [str(BENCH), *args])
    rc = mod.main()
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cpu_run_prints_ratios_and_ours_uses_less_memory(monkeypatch, capsys):
    rc, out, err = run(monkeypatch, capsys, "--n", "300", "--d", "32", "--v", "1000", "--chunk-size", "0", "64",
                       "--repeats", "1")
    assert rc == 0, err
    rows = {cells[1]: cells for cells in (
        [c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| 32 |"))}
    floor = [name for name in rows if name.startswith("floor")]
    assert len(floor) == 1 and float(rows[floor[0]][2]) > 0
    assert set(rows) - set(floor) == {"naive", "ours (chunked, chunk default)", "ours (chunked, chunk 64)"}
    assert rows["naive"][3] == "1.00x" and rows["naive"][5] == "1.000x"
    assert float(rows["ours (chunked, chunk 64)"][5].rstrip("x")) < 0.5


@pytest.mark.parametrize("args,msg", [(("--compare", "liger,cce"), "--device cuda"),
                                      (("--compare", "fast"), "fast")])
def test_bad_compare_is_refused_by_name(monkeypatch, capsys, args, msg):
    rc, out, err = run(monkeypatch, capsys, *args)
    assert rc == 2 and msg in err


def test_bf16_grad_accum_input_row_holds_less_than_fp32(monkeypatch, capsys):
    rc, out, err = run(monkeypatch, capsys, "--n", "64", "--d", "64", "--v", "4000", "--dtype", "bf16",
                       "--chunk-size", "16", "--grad-accum", "fp32", "input", "--repeats", "1")
    assert rc == 0, err
    mem = {cells[1]: float(cells[4]) for cells in (
        [c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| 64 |"))
        if cells[4]}
    # fp32 mode sums into a V x D fp32 buffer (0.98 MiB here), input mode into the bf16
    # gradient itself (0.49 MiB): at least V x D x 2 bytes less at the peak.
    assert mem["ours (chunked, chunk 16)"] - mem["ours (chunked, chunk 16, grad_accum input)"] > 0.45
