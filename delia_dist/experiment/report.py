"""Side-by-side comparison of runs: report.md with its tables and PNG plots, and results.json.

Rows come either from MLflow (`build_report`, `delia report`: mlflow_runs.py) or from run
directories (`delia experiment`: metrics.jsonl per run); tables.py renders them, plots.py
draws them.
"""
from __future__ import annotations

import json
from pathlib import Path

from .. import atomic
from .mlflow_runs import SUMMARY_TAG, runs_from_mlflow
from .plots import plot_alignment, plot_losses, plot_metric_vs_scale
from .seeds import METHOD, seed_table
from .tables import comparison_table, markdown_table, norm, terminal_width, with_derived

__all__ = ["build_report", "comparison_table", "terminal_width", "write_report"]


def _history_from_run_dir(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    path = Path(run_dir) / "metrics.jsonl"
    hist: dict[str, list] = {}
    if not path.is_file():
        return hist
    from ..tracking import clean_name
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        for k, v in rec.items():
            if k != "step" and isinstance(v, (int, float)):
                hist.setdefault(clean_name(k), []).append((int(rec.get("step", 0)), float(v)))
    return hist


def write_report(results: list[dict], out_dir: str | Path, histories: dict | None = None) -> Path:
    """report.md + PNGs + results.json in out_dir. histories: {run: {metric: [(step, value)]}};
    runs without one are read from row["run_dir"]/metrics.jsonl."""
    results = with_derived(norm(results))
    histories = dict(histories or {})
    for r in results:
        if r["run"] not in histories and r.get("run_dir"):
            histories[r["run"]] = _history_from_run_dir(r["run_dir"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = [plot_losses(results, histories, out / "loss_per_source.png"),
             plot_metric_vs_scale(results, out / "eval_vs_diverse_scale.png"),
             plot_alignment(results, histories, out / "token_alignment.png")]
    md = ["# DELIA experiment report", "", markdown_table(results, histories), "",
          "Mtok: training tokens (millions) read per source; best_X: best value over the run's "
          "evaluations when it differs from the final one; d(token,keyword)_lN: distance at layer N "
          "(lower = closer); time_s: wall time of the MLflow run; gpu_h: time_s x ranks / 3600.", ""]
    if any("seed" in r for r in results):
        md += ["## Mean over seeds", "", seed_table(results, markdown=True), "",
               f"Each cell: mean [{METHOD}].", ""]
    md += [f"![{p.stem}]({p.name})" for p in plots if p is not None]
    atomic.write_text(out / "report.md", "\n".join(md) + "\n")
    atomic.write_text(out / "results.json", json.dumps(results, indent=1))
    return out / "report.md"


def build_report(experiment: str, tracking_uri: str, out_dir: str | Path, run_ids: list[str] | None = None,
                 summary_run: bool = False) -> Path:
    """Compare the runs of `experiment`: prints the table, writes out_dir/report.md and PNGs;
    with summary_run, also logs them as artifacts of a run tagged delia.kind=report."""
    rows, histories = runs_from_mlflow(experiment, tracking_uri, run_ids)
    path = write_report(rows, out_dir, histories)
    print(comparison_table(rows, histories, max_width=terminal_width()))
    not_done = [f"{r['run']} ({r['status']})" for r in rows if "status" in r]
    if not_done:
        print(f"note: not finished: {', '.join(not_done)}")
    if summary_run:
        from mlflow.tracking import MlflowClient
        client = MlflowClient(tracking_uri)
        exp_id = client.get_experiment_by_name(experiment).experiment_id
        run = client.create_run(exp_id, run_name=f"report-{experiment}",
                                tags={SUMMARY_TAG: "report", "compared_runs": ",".join(r["run_id"] for r in rows)})
        client.log_artifacts(run.info.run_id, str(Path(out_dir)), "report")
        client.set_terminated(run.info.run_id)
        print(f"logged to MLflow run {run.info.run_id} (artifacts under report/)")
    return path
