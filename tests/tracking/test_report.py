"""`delia report` reads runs back from MLflow and compares them in a table and plots."""
from __future__ import annotations

import subprocess
import sys

from delia_dist.config import TrackingConfig
from delia_dist.tracking import Tracker


def fabricate(tmp_path, name: str, share: float, bleu: float):
    t = Tracker(TrackingConfig(experiment="cmp", run_name=name, system_metrics=False), tmp_path, enabled=True)
    t.start({"data": {"sources": [{"name": "diverse", "weight": share}]}})
    for step in range(1, 21):
        t.log_metrics({"loss": 3.0 / step, "loss/downstream": 2.5 / step, "loss/diverse": 3.5 / step,
                       "share/diverse": share, "tokens/diverse": 100.0 * step}, step)
    t.log_metrics({"eval/translation/bleu": bleu, "eval/format/accuracy": 0.5 + share / 2,
                   "align/<sep>/json/l0": 1.0 - share}, 20)
    t.close()
    return t.run_id


def test_report_table_and_plots(tmp_path):
    fabricate(tmp_path, "baseline", 0.0, 10.0)
    fabricate(tmp_path, "delia", 0.8, 12.5)
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "delia_dist.cli", "report", "cmp", "--tracking-uri",
                           f"sqlite:///{tmp_path}/mlflow.db", "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = lines[0].split()
    assert header[:4] == ["run", "steps", "diverse_share", "train_loss"] and "BLEU" in header
    rows = {l.split()[0]: l.split() for l in lines[2:4]}
    assert rows["baseline"][header.index("BLEU")] == "10.000"
    assert rows["delia"][header.index("BLEU")] == "12.500"
    assert rows["delia"][header.index("steps")] == "20"
    assert rows["delia"][header.index("d(<sep>,json)_l0")] == "0.200"
    for png in ("loss_per_source.png", "eval_vs_diverse_share.png", "token_alignment.png"):
        assert (out / png).stat().st_size > 5_000
    assert "| baseline |" in (out / "report.md").read_text()


def test_report_unknown_experiment_is_a_clear_error(tmp_path):
    fabricate(tmp_path, "only", 0.5, 1.0)
    proc = subprocess.run([sys.executable, "-m", "delia_dist.cli", "report", "nope", "--tracking-uri",
                           f"sqlite:///{tmp_path}/mlflow.db"], capture_output=True, text=True)
    assert proc.returncode == 2 and "no MLflow experiment 'nope'" in proc.stderr and "'cmp'" in proc.stderr
