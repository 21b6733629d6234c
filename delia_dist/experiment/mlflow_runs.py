"""Comparison rows and metric histories read back from an MLflow experiment."""
from __future__ import annotations

from pathlib import Path

from .tables import lower_is_better

SUMMARY_TAG = "delia.kind"  # runs tagged delia.kind=report or matrix (a parent) are not training runs
NOT_COMPARED = ("report", "matrix")


def runs_from_mlflow(experiment: str, tracking_uri: str, run_ids: list[str] | None = None):
    """(rows, histories) for the runs of an MLflow experiment (report runs excluded)."""
    from mlflow.tracking import MlflowClient

    from ..errors import UserError
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise UserError(f"no MLflow store at {tracking_uri} (give --tracking-uri or set MLFLOW_TRACKING_URI)")
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise UserError(f"no MLflow experiment {experiment!r} at {tracking_uri}; experiments there: {names}")
    if run_ids:
        runs = []
        for rid in run_ids:
            try:
                runs.append(client.get_run(rid))
            except Exception as e:  # noqa: BLE001 - MlflowException for an unknown id
                raise UserError(f"run {rid!r} not found at {tracking_uri}: {str(e)[:200]}") from e
    else:
        runs = [r for r in client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
                if r.data.tags.get(SUMMARY_TAG) not in NOT_COMPARED]
    if not runs:
        raise UserError(f"MLflow experiment {experiment!r} has no runs to compare")
    rows, histories = [], {}
    for run in runs:
        m, p, tags = run.data.metrics, run.data.params, run.data.tags
        name = run.info.run_name or run.info.run_id[:8]
        if name in histories:
            name = f"{name}-{run.info.run_id[:6]}"
        hist = {k: [(x.step, x.value) for x in client.get_metric_history(run.info.run_id, k)]
                for k in m if k == "loss" or k.startswith(("loss/", "tokens/", "eval/", "align/"))}
        wall = ((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000.0
        row = {"run": name, "run_id": run.info.run_id,
               "steps": max((s for s, _ in hist.get("loss", [])), default=0),
               "diverse_share": m.get("share/diverse", float(p.get("data.sources.diverse.weight", 0.0))),
               "train_loss_last": m.get("loss"), "wall_s": wall}
        if tags.get("world_size", "").isdigit():
            row["gpu_hours"] = wall * int(tags["world_size"]) / 3600.0
        if tags.get("seed", "").isdigit():  # a matrix run repeated over seeds (experiment.seeds)
            row.update(seed=int(tags["seed"]), group=tags.get("group", name))
        if tags.get("steps_from"):
            row["steps_from"] = tags["steps_from"]
        if run.info.status != "FINISHED":
            row["status"] = run.info.status
        row.update({k: v for k, v in m.items() if k.startswith(("eval/", "align/", "tokens/", "grad_cos/"))})
        for k, pts in hist.items():
            if k.startswith("eval/") and len(pts) > 1:
                vals = [v for _, v in pts]
                row[f"eval/best/{k.removeprefix('eval/')}"] = min(vals) if lower_is_better(k) else max(vals)
        rows.append({k: v for k, v in row.items() if v is not None})
        histories[name] = hist
    return rows, histories


